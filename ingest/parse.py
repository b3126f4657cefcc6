"""What a scrape's body becomes: samples, as rows (`Parsed`) or columns (`Samples`), and
the JSON `/stats` parser (the Prometheus text parser is in `ingest.prometheus`).

Both parsers raise `ParseError` with a message fit for the scrape's error text; nothing
else escapes them, whatever the body holds.
"""

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from schemas.labels import NO_LABELS
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


@dataclass(slots=True)
class Samples:
    """One scrape's samples as columns: no Python object per sample on the way to Arrow."""

    metric: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    timestamp_ms: list[int | None] | None = None  # None: no sample has an explicit time

    def __len__(self) -> int:
        return len(self.metric)

    def rows(self) -> list[Parsed]:
        stamps = self.timestamp_ms or [None] * len(self.metric)
        return [
            Parsed(m, k, v, labels, ts)  # type: ignore[arg-type]
            for m, k, v, labels, ts in zip(
                self.metric, self.kind, self.value, self.labels, stamps, strict=True
            )  # fmt: skip
        ]

    @classmethod
    def of(cls, rows: Sequence[Parsed]) -> "Samples":
        if not rows:
            return cls()
        metric, kind, value, labels, stamps = (list(c) for c in zip(*rows, strict=True))
        explicit = stamps if any(ts is not None for ts in stamps) else None
        return cls(metric, kind, value, labels, explicit)


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
