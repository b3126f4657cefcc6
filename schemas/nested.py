"""Dotted metric names back into the nested JSON the upstreams (and the old service) sent."""

import math
from typing import Any

# Non-finite numbers in JSON answers and messages, as Prometheus's HTTP API writes them.
_TEXT_OF = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}


def json_number(value: float) -> float | str:
    """A float as JSON carries it: itself if finite, else "+Inf", "-Inf" or "NaN"
    (orjson would write null)."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def json_value(value: float) -> float | int | str:
    """`json_number`, with whole numbers as ints (`number`)."""
    return number(value) if math.isfinite(value) else json_number(value)


def from_json_number(value: float | int | str) -> float:
    """The float a `json_number`/`json_value` stands for."""
    return _TEXT_OF[value] if isinstance(value, str) else float(value)


def number(value: float) -> float | int:
    """Counters are whole numbers upstream; show them as the old service did."""
    value = float(value)
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def nests(metric: str) -> bool:
    """Whether `put` puts `metric` below its first level (a dotted name without labels)."""
    return "." in metric and "{" not in metric


def put(tree: dict[str, Any], metric: str, value: object) -> None:
    """`a.b.c` → tree["a"]["b"]["c"]; a name with labels (`x{k="a.b"}`) stays whole."""
    if not nests(metric):  # most names: one level (as the loop below does)
        tree[metric] = value
        return
    parts = metric.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            if child is not None:  # a leaf is in the way: keep the rest dotted
                node[".".join(parts[i:])] = value
                return
            child = node[part] = {}
        node = child
    node[parts[-1]] = value
