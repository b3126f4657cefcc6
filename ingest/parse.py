"""Turning an upstream body into (metric, kind, value) triples.

Both parsers raise `ParseError` with a message fit for the scrape's error text; nothing
else escapes them, whatever the body holds.
"""

import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import orjson
from prometheus_client.parser import text_string_to_metric_families

from schemas.rows import Kind

MAX_SAMPLES_PER_SCRAPE = 10_000


class ParseError(Exception):
    """The body is not something we can store; the message says why."""


class Parsed(NamedTuple):
    metric: str
    kind: Kind
    value: float


def flatten(doc: Any) -> Iterator[tuple[str, float]]:
    """Every number in a JSON document with its dotted path; booleans and strings are not."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        prefix, node = stack.pop()
        if isinstance(node, dict):
            items = [(f"{prefix}{key}", value) for key, value in node.items()]
        elif isinstance(node, list):
            items = [(f"{prefix}{i}", value) for i, value in enumerate(node)]
        else:
            # A number needs a name: a bare top-level number, or one under the key "",
            # has none and is not a sample.
            if isinstance(node, int | float) and not isinstance(node, bool) and prefix[:-1]:
                yield prefix[:-1], float(node)
            continue
        # Reversed so the document's order is the order of the samples.
        for path, value in reversed(items):
            stack.append((f"{path}.", value))


def parse_json(body: bytes, kind_of: Callable[[str], Kind]) -> list[Parsed]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        head = body[:40].decode("utf-8", "replace").strip()
        raise ParseError(f"body is not JSON ({exc}); it starts with {head!r}") from None
    out = []
    for metric, value in flatten(doc):
        if not math.isfinite(value):
            raise ParseError(f"{metric} is not a finite number")
        out.append(Parsed(metric, kind_of(metric), value))
        if len(out) > MAX_SAMPLES_PER_SCRAPE:
            raise ParseError(f"more than {MAX_SAMPLES_PER_SCRAPE} metrics in one body")
    return out


# How each sample of a Prometheus family is stored: cumulative parts are counters.
_COUNTER_SUFFIXES = {
    "counter": ("_total", ""),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum"),
}


def _label_text(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    parts = []
    for key, value in labels.items():
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{key}="{escaped}"')
    return "{" + ",".join(parts) + "}"


def parse_prometheus(body: bytes) -> list[Parsed]:
    """Prometheus text format: names keep their labels; `_created` samples are skipped.

    Counters and the cumulative parts of histograms and summaries (`_bucket`, `_count`,
    `_sum`) are counters; everything else (gauges, quantiles, info, untyped) is a gauge.
    NaN and infinite values are legal in the format but are not samples, so they are
    skipped rather than failing the scrape.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"body is not UTF-8 text ({exc})") from None
    out = []
    try:
        for family in text_string_to_metric_families(text):
            suffixes = _COUNTER_SUFFIXES.get(family.type, ())
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                if not math.isfinite(sample.value):
                    continue
                suffix = sample.name[len(family.name) :]
                kind: Kind = "counter" if suffix in suffixes else "gauge"
                value = float(sample.value)
                out.append(Parsed(sample.name + _label_text(sample.labels), kind, value))
                if len(out) > MAX_SAMPLES_PER_SCRAPE:
                    raise ParseError(f"more than {MAX_SAMPLES_PER_SCRAPE} samples in one body")
    except ParseError:
        raise
    except Exception as exc:  # the parser raises ValueError, IndexError, KeyError, ...
        raise ParseError(f"not Prometheus text format: {exc}") from None
    return out
