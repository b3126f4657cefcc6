"""Dotted metric names back into the nested JSON the upstreams (and the old service) sent."""

from typing import Any


def number(value: float) -> float | int:
    """Counters are whole numbers upstream; show them as the old service did."""
    value = float(value)
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def put(tree: dict[str, Any], metric: str, value: float | int | str) -> None:
    """`a.b.c` → tree["a"]["b"]["c"]; a name with labels (`x{k="a.b"}`) stays whole."""
    parts = [metric] if "{" in metric else metric.split(".")
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
