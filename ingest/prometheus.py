"""Prometheus text format, version 0.0.4 (what exporters serve by default), into columns.

Our own parser: prometheus-client's renames a counter exposed as `x` to `x_total`, drops
`# TYPE` context for OpenMetrics-style `_total` samples, and keeps labels as exposed.

An exporter sends the same series every scrape, so each source has a `PrometheusParser`
that remembers what each series' text (`name{labels}`) means: its bare name and
canonical labels, parsed, validated and encoded once. A known line then costs a split
and a float; only new text goes through the full parse (measured in BENCHMARKS.md).
"""

import re
from collections.abc import Mapping

from ingest.parse import MAX_SAMPLES_PER_SCRAPE, Parsed, ParseError, Samples
from schemas.labels import MAX_NAME_BYTES, LabelError, Labels, canonical, to_json
from schemas.rows import Kind

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
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
MAX_REMEMBERED = 100_000  # series texts a parser keeps (a source's sample_limit is lower)

Series = tuple[str, str]  # (bare name, canonical labels JSON)


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _labels(body: str, line: int) -> Labels:
    if not body.strip():
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


def _series(head: str, line: int) -> Series:
    """`name{labels}` (the text before the value) as its bare name and canonical labels."""
    name, brace, rest = head.partition("{")
    name = name.rstrip(" \t")
    if not _NAME.fullmatch(name):
        raise ParseError(f"line {line}: not a sample: {head[:80]!r}")
    if len(name) > MAX_NAME_BYTES:
        raise ParseError(f"line {line}: metric name over {MAX_NAME_BYTES} bytes")
    if not brace:
        return name, "{}"
    if not rest.endswith("}"):
        raise ParseError(f"line {line}: not a sample: {head[:80]!r}")
    return name, to_json(_labels(rest[:-1], line))


def kind_of(name: str, types: Mapping[str, str]) -> Kind | None:
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


def _kind_here(name: str, types: Mapping[str, str]) -> Kind | None:
    """`kind_of`, and None for a `<name>_created` typed on its own (prometheus-client
    writes `# TYPE x_created gauge`) beside the counter `<name>_total` or the
    histogram/summary `<name>`: a creation time too. Any other `_created` is kept."""
    kind = kind_of(name, types)
    if kind is not None and name.endswith("_created"):
        base = name[: -len("_created")]
        if kind_of(f"{base}_total", types) == "counter" or types.get(base) in (
            "histogram",
            "summary",
        ):
            return None
    return kind


def _split(line: str, number: int) -> tuple[str, str, str | None]:
    """A sample line as (series text, value text, timestamp text or None)."""
    close = line.rfind("}")
    if close >= 0:
        head, rest = line[: close + 1], line[close + 1 :].split()
    else:
        head, *rest = line.split()
    if not rest or len(rest) > 2 or (close >= 0 and line[close + 1 : close + 2] not in " \t"):
        raise ParseError(f"line {number}: not a sample: {line[:80]!r}")
    return head, rest[0], rest[1] if len(rest) == 2 else None


class PrometheusParser:
    """Parses one source's expositions, remembering what each series' text means."""

    def __init__(self) -> None:
        self._series: dict[str, Series] = {}
        self._kinds: dict[tuple[tuple[str, str], ...], dict[str, Kind | None]] = {}

    def parse(
        self,
        body: bytes,
        kinds: Mapping[str, Kind] | None = None,
        limit: int = MAX_SAMPLES_PER_SCRAPE,
    ) -> Samples:
        """Prometheus text as columns: each sample under its bare name with canonical
        labels.

        Kinds follow the `# TYPE` lines (counter, gauge, untyped; the cumulative parts of
        histograms and summaries are counters; a sample no TYPE covers is untyped), then
        `kinds` by bare name. A `<name>_created` sample is a creation time, skipped where
        the exposition has the counter `<name>_total` or the histogram/summary `<name>`;
        any other `_created` is kept. NaN is skipped; +Inf/-Inf and explicit timestamps
        (ms) are kept. A series exposed twice keeps its first sample. More than `limit`
        samples, an invalid name or label: ParseError (the scrape fails whole, as
        Prometheus's does)."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError(f"body is not UTF-8 text ({exc})") from None
        types: dict[str, str] = {}
        found: list[Series] = []
        values: list[float] = []
        stamps: list[int | None] | None = None
        seen: set[Series] = set()
        remembered = self._series
        for number, line in enumerate(text.splitlines(), 1):
            if not line or line.isspace():
                continue
            if line[0] == "#" or line.lstrip()[0] == "#":
                typed = _TYPE.match(line.strip())
                if typed is not None:
                    types.setdefault(typed.group(1), typed.group(2).lower())
                continue
            # The usual line, `<remembered series text> <value>`, needs no splitting: a
            # remembered text never holds the value part, so a hit is what _split gives.
            head, space, value_text = line.rpartition(" ")
            series = (
                remembered.get(head) if space and value_text and "\t" not in value_text else None
            )
            stamp = None
            if series is None:
                head, value_text, stamp = _split(line.strip(), number)
                series = remembered.get(head)
                if series is None:
                    series = _series(head, number)
                    if len(remembered) < MAX_REMEMBERED:
                        remembered[head] = series
            try:
                if "_" in value_text:  # Python's float takes 1_000; the format does not
                    raise ValueError
                value = float(value_text)
            except ValueError:
                raise ParseError(f"line {number}: {value_text[:40]!r} is not a number") from None
            if value != value or series in seen:  # NaN, or a series exposed again
                continue
            seen.add(series)
            if stamp is not None:
                if stamps is None:
                    stamps = [None] * len(found)
                stamps.append(_stamp(stamp, number))
            elif stamps is not None:
                stamps.append(None)
            found.append(series)
            values.append(value)
            if len(found) > limit:
                raise ParseError(f"sample_limit exceeded: more than {limit} samples in one scrape")
        return self._columns(found, values, stamps, types, kinds)

    def _columns(
        self,
        found: list[Series],
        values: list[float],
        stamps: list[int | None] | None,
        types: dict[str, str],
        kinds: Mapping[str, Kind] | None,
    ) -> Samples:
        """The samples with their kinds, creation times left out."""
        of = self._kinds_for(types, found)
        out = Samples(timestamp_ms=[] if stamps is not None else None)
        for i, (name, labels) in enumerate(found):
            kind = of[name]
            if kind is None:
                continue
            if kinds and name in kinds:
                kind = kinds[name]
            out.metric.append(RENAMED.get(name, name))
            out.kind.append(kind)
            out.value.append(values[i])
            out.labels.append(labels)
            if stamps is not None and out.timestamp_ms is not None:
                out.timestamp_ms.append(stamps[i])
        return out

    def _kinds_for(self, types: dict[str, str], found: list[Series]) -> dict[str, Kind | None]:
        """Each name's kind under these TYPE lines (None: a creation time to skip); the
        same lines next scrape reuse the answer."""
        key = tuple(sorted(types.items()))
        of = self._kinds.get(key)
        if of is None:
            if len(self._kinds) > 16:  # an exporter whose TYPE lines keep changing
                self._kinds.clear()
            of = self._kinds[key] = {}
        for name, _ in found:
            if name not in of:
                of[name] = _kind_here(name, types)
        return of


def _stamp(text: str, number: int) -> int:
    try:
        stamp = int(text)
    except ValueError:
        raise ParseError(f"line {number}: timestamp {text[:40]!r} is not whole ms") from None
    if not _EARLIEST_MS <= stamp < _LATEST_MS:
        raise ParseError(f"line {number}: timestamp {stamp} ms is out of range")
    return stamp


def parse_prometheus(
    body: bytes, kinds: Mapping[str, Kind] | None = None, limit: int = MAX_SAMPLES_PER_SCRAPE
) -> list[Parsed]:
    """One exposition, parsed by a parser that remembers nothing, as rows."""
    return PrometheusParser().parse(body, kinds, limit).rows()
