"""Turning an upstream body into (metric, kind, value) triples.

Both parsers raise `ParseError` with a message fit for the scrape's error text; nothing
else escapes them, whatever the body holds.
"""

import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import orjson

from schemas.labels import MAX_NAME_BYTES, NO_LABELS, LabelError, Labels, canonical, to_json
from schemas.rows import Kind

MAX_SAMPLES_PER_SCRAPE = 10_000  # a source's default `sample_limit`


class ParseError(Exception):
    """The body is not something we can store; the message says why."""


class Parsed(NamedTuple):
    metric: str  # the bare name
    kind: Kind
    value: float
    labels: str = NO_LABELS  # canonical JSON (schemas.labels)
    timestamp_ms: int | None = None  # an explicit timestamp in the exposition


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


def parse_json(
    body: bytes, kind_of: Callable[[str], Kind], limit: int = MAX_SAMPLES_PER_SCRAPE
) -> list[Parsed]:
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
        if len(out) > limit:
            raise ParseError(f"sample_limit exceeded: more than {limit} samples in one scrape")
    return out


# Prometheus text format, version 0.0.4 (what exporters serve by default). Our own parser:
# prometheus-client's renames a counter exposed as `x` to `x_total`, drops `# TYPE`
# context for OpenMetrics-style `_total` samples, and keeps labels as exposed.
_SAMPLE = re.compile(
    r"([a-zA-Z_:][a-zA-Z0-9_:]*)[ \t]*(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+(-?[0-9]+))?[ \t]*"
)
_TYPE = re.compile(r"#[ \t]+TYPE[ \t]+([a-zA-Z_:][a-zA-Z0-9_:]*)[ \t]+(\w+)")
_PAIR = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*(?:,|$)')
_ESCAPE = re.compile(r"\\(.)")
# The parts of a family whose values are cumulative, by the family's type.
_CUMULATIVE = {
    "counter": ("", "_total"),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum"),
}
_CREATED_OF = ("counter", "histogram", "summary")
_EARLIEST_MS, _LATEST_MS = 86_400_000, 221_845_392_000_000  # 1970-01-02 .. 9000-01-01
# Names our scrape writes itself: an exporter's own are kept under another name, as
# Prometheus does with `honor_labels: false`.
RENAMED = {"up": "exported_up", "scrape_duration_seconds": "exported_scrape_duration_seconds"}


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _labels(body: str | None, line: int) -> Labels:
    if not body or not body.strip():
        return ()
    pairs, pos = [], 0
    while pos < len(body):
        match = _PAIR.match(body, pos)
        if match is None or match.end() == pos:
            raise ParseError(f'line {line}: labels are not name="value" pairs')
        pairs.append((match.group(1), _unescape(match.group(2))))
        pos = match.end()
    try:
        return canonical(pairs)
    except LabelError as exc:
        raise ParseError(f"line {line}: {exc}") from None


def _kind(name: str, types: dict[str, str]) -> Kind | None:
    """A sample's kind from the exposition's `# TYPE` lines; None for a creation time."""
    family = types.get(name)
    if family is not None:
        if family in ("counter", "gauge", "untyped"):
            return family  # type: ignore[return-value]
        return "gauge"  # a summary's quantiles (or a histogram named like its family)
    for suffix in ("_total", "_created", "_bucket", "_count", "_sum"):
        if name.endswith(suffix):
            family = types.get(name[: -len(suffix)])
            if family is None:
                continue
            if suffix == "_created" and family in _CREATED_OF:
                return None
            if suffix in _CUMULATIVE.get(family, ()):
                return "counter"
    return "untyped"


def parse_prometheus(
    body: bytes, kinds: Mapping[str, Kind] | None = None, limit: int = MAX_SAMPLES_PER_SCRAPE
) -> list[Parsed]:
    """Prometheus text format: each sample under its bare name with canonical labels.

    Kinds follow the `# TYPE` lines (counter, gauge, untyped; the cumulative parts of
    histograms and summaries are counters; a sample no TYPE covers is untyped), then
    `kinds` by bare name. A `<name>_created` sample is a creation time, skipped where the
    exposition has the counter `<name>_total` or the histogram/summary `<name>`; any
    other `_created` is kept. NaN is skipped; +Inf/-Inf and explicit timestamps (ms) are
    kept. A series exposed twice keeps its first sample. More than `limit` samples, an
    invalid name or label: ParseError (the scrape fails whole, as Prometheus's does).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"body is not UTF-8 text ({exc})") from None
    types: dict[str, str] = {}
    raw: list[tuple[str, Labels, float, int | None]] = []
    seen: set[tuple[str, Labels]] = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line[0] == "#":
            typed = _TYPE.match(line)
            if typed is not None:
                types.setdefault(typed.group(1), typed.group(2).lower())
            continue
        match = _SAMPLE.fullmatch(line)
        if match is None:
            raise ParseError(f"line {number}: not a sample: {line[:80]!r}")
        name, label_text, value_text, stamp = match.groups()
        if len(name) > MAX_NAME_BYTES:
            raise ParseError(f"line {number}: metric name over {MAX_NAME_BYTES} bytes")
        try:
            value = float(value_text)
        except ValueError:
            raise ParseError(f"line {number}: {value_text[:40]!r} is not a number") from None
        if math.isnan(value):
            continue
        labels = _labels(label_text, number)
        if (name, labels) in seen:
            continue
        seen.add((name, labels))
        if stamp is not None and not _EARLIEST_MS <= int(stamp) < _LATEST_MS:
            raise ParseError(f"line {number}: timestamp {stamp} ms is out of range")
        raw.append((name, labels, value, int(stamp) if stamp is not None else None))
        if len(raw) > limit:
            raise ParseError(f"sample_limit exceeded: more than {limit} samples in one scrape")
    totals = {
        name for name, *_ in raw if name.endswith("_total") and _kind(name, types) == "counter"
    }
    out = []
    for name, labels, value, stamp in raw:
        kind = _kind(name, types)
        if kind is None:
            continue
        if name.endswith("_created"):
            base = name[: -len("_created")]
            if f"{base}_total" in totals or types.get(base) in ("histogram", "summary"):
                continue
        if kinds and name in kinds:
            kind = kinds[name]
        out.append(Parsed(RENAMED.get(name, name), kind, value, to_json(labels), stamp))
    return out
