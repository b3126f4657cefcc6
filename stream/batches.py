"""Reading committed batches back from DuckDB, with their deltas and scrape errors.

The live tail and every resume use the same reader, so what a client gets live and what
it gets on catching up are the same messages.
"""

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import duckdb

from schemas.labels import Labels

# Counter deltas need each series' previous sample; a live series has one within minutes.
# Series without one (new, or after a long gap) fall back to an exact search (the macro).
LOOKBACK = timedelta(minutes=10)
PAGE_ROWS = 5_000


class Row(NamedTuple):
    seq: int
    batch: int
    ts: datetime
    series_id: int
    tenant_id: str
    tool_id: str | None
    session_id: str | None
    source: str
    metric: str  # the series' text form: `name{k="v"}`, or the bare name without labels
    labels: Labels
    kind: str
    value: float
    delta: float | None


def _row(r: tuple[Any, ...]) -> Row:
    return Row(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], labels_of(r[9]), r[10],
               r[11], r[12])  # fmt: skip


def labels_of(stored: dict[str, str] | None) -> Labels:
    """A stored label map (already canonical) as the stream's label tuple."""
    return tuple(stored.items()) if stored else ()


class ScrapeFailure(NamedTuple):
    batch: int
    ts: datetime
    tenant_id: str
    tool_id: str | None
    source: str
    error: str


class Batch(NamedTuple):
    batch: int
    last_seq: int
    ts: datetime
    rows: list[Row]
    failures: list[ScrapeFailure]


_BOUNDS = "SELECT min(ts), max(ts) FROM points WHERE seq > $after AND seq <= $upto"
_ROWS = """
SELECT d.seq, d.batch, d.ts, d.series_id, k.tenant_id, k.tool_id, k.session_id, k.source,
       k.name, k.labels, d.kind, d.value, d.delta
FROM point_deltas_between($lo, $hi, lookback := $lookback) d
JOIN series_keys k ON k.id = d.series_id
WHERE d.seq > $after AND d.seq <= $upto
ORDER BY d.seq
"""
_FAILURES = """
SELECT batch, ts, tenant_id, tool_id, source, error FROM scrapes
WHERE batch >= $first AND batch <= $last AND NOT up
ORDER BY batch, source
"""
_BATCH_OF = "SELECT batch FROM points WHERE seq = $seq"
_BATCH_END = "SELECT max(seq) FROM points WHERE batch = $batch AND seq >= $seq"


def read_batches(cur: duckdb.DuckDBPyConnection, after: int, upto: int) -> list[Batch]:
    """Every batch with rows in seq (after, upto], which must end on a batch boundary."""
    if upto <= after:
        return []
    lo, hi = cur.execute(_BOUNDS, {"after": after, "upto": upto}).fetchall()[0]
    if lo is None:
        return []
    params = {
        "lo": lo,
        "hi": hi + timedelta(microseconds=1),
        "lookback": LOOKBACK,
        "after": after,
        "upto": upto,
    }
    rows = [_row(r) for r in cur.execute(_ROWS, params).fetchall()]
    if not rows:
        return []
    return group_batches(rows, read_failures(cur, rows[0].batch, rows[-1].batch))


def read_failures(
    cur: duckdb.DuckDBPyConnection, first: int, last: int
) -> dict[int, list[ScrapeFailure]]:
    """Failed scrapes of batches first..last, by batch."""
    failures: dict[int, list[ScrapeFailure]] = {}
    for f in cur.execute(_FAILURES, {"first": first, "last": last}).fetchall():
        failures.setdefault(f[0], []).append(ScrapeFailure(*f))
    return failures


def group_batches(rows: list[Row], failures: dict[int, list[ScrapeFailure]]) -> list[Batch]:
    """Rows in seq order, cut into their batches."""
    return [
        Batch(
            batch_rows[0].batch,
            batch_rows[-1].seq,
            batch_rows[-1].ts,
            batch_rows,
            failures.get(batch_rows[0].batch, []),
        )  # fmt: skip
        for batch_rows in _split(rows)
    ]


def _split(rows: list[Row]) -> Iterator[list[Row]]:
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i].batch != rows[start].batch:
            yield rows[start:i]
            start = i


def page_end(cur: duckdb.DuckDBPyConnection, after: int, head: int) -> int:
    """Where a page of about PAGE_ROWS rows after `after` ends, never inside a batch."""
    probe = min(after + PAGE_ROWS, head)
    if probe <= after:
        return after
    found = cur.execute(_BATCH_OF, {"seq": probe}).fetchall()
    if not found:
        return probe
    (end,) = cur.execute(_BATCH_END, {"batch": found[0][0], "seq": probe}).fetchall()[0]
    return min(int(end), head) if end is not None else probe
