"""The in-process shape of a sample, and its Arrow form as the writer appends it."""

from collections.abc import Iterable
from datetime import datetime
from typing import Literal, NamedTuple

import pyarrow as pa

from schemas.labels import NO_LABELS

Kind = Literal["counter", "gauge", "delta", "untyped"]


class SampleRow(NamedTuple):
    """One observation, before the writer gives it a `seq` and a `batch`."""

    ts: datetime
    tenant_id: str
    tool_id: str | None
    session_id: str | None
    source: str
    metric: str
    kind: Kind
    value: float
    labels: str = NO_LABELS  # canonical JSON (schemas.labels)


# A sample as the writer receives it (it adds seq and batch, and resolves the series).
SAMPLE_SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        ("tenant_id", pa.string()),
        ("tool_id", pa.string()),
        ("session_id", pa.string()),
        ("source", pa.string()),
        ("metric", pa.string()),
        ("kind", pa.string()),
        ("value", pa.float64()),
        ("labels", pa.string()),
    ]
)


def to_arrow(rows: Iterable[SampleRow]) -> pa.Table:
    """Columnar form of `rows`, in the order given."""
    columns = list(zip(*rows, strict=True)) or [() for _ in SAMPLE_SCHEMA]
    return pa.Table.from_arrays(
        [pa.array(col, type=field.type) for col, field in zip(columns, SAMPLE_SCHEMA, strict=True)],
        schema=SAMPLE_SCHEMA,
    )


class ScrapeRow(NamedTuple):
    """How one source's scrape in one tick went."""

    ts: datetime
    tenant_id: str
    tool_id: str | None
    source: str
    up: bool
    duration_seconds: float
    error: str | None
