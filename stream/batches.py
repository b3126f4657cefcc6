"""Reading committed batches back from DuckDB, with their deltas and scrape errors.

The live tail and every resume use the same reader, so what a client gets live and what
it gets on catching up are the same messages.
"""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from schemas.db import arrow
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
_BATCH_END = """
SELECT max(seq) FROM points
WHERE batch = (SELECT batch FROM points WHERE seq = $seq) AND seq >= $seq
"""


def read_batches(
    cur: duckdb.DuckDBPyConnection, after: int, upto: int, labels: "SeriesLabels | None" = None
) -> list[Batch]:
    """Every batch with rows in seq (after, upto], which must end on a batch boundary;
    `labels` remembers series' labels from one read to the next (`series_labels`)."""
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
    rows = rows_of(arrow(cur, _ROWS, params), labels if labels is not None else {})
    if not rows:
        return []
    return group_batches(rows, read_failures(cur, rows[0].batch, rows[-1].batch))


SeriesLabels = dict[int, Labels]  # series id -> its labels, which never change
_LABELS: dict[str, SeriesLabels] = {}  # per database, by its epoch
MAX_LABELS = 200_000
_EPOCH_US = datetime(1970, 1, 1, tzinfo=UTC)


def series_labels(epoch: str) -> SeriesLabels:
    """The labels of series read so far from the database of `epoch`, for every catch-up
    of this process (a series id names one series for the life of its database)."""
    return _LABELS.setdefault(epoch, {})


def rows_of(table: pa.Table, labels: SeriesLabels) -> list[Row]:
    """`_ROWS`'s answer as rows, read as Arrow and converted per column: times once per
    distinct time, labels once per series (what costs most per row in `fetchall`)."""
    if not table.num_rows:
        return []
    micros = pc.cast(table.column("ts"), pa.int64()).to_pylist()
    times = {us: _EPOCH_US + timedelta(microseconds=us) for us in set(micros)}
    ids = table.column("series_id").to_pylist()
    # This page's own map: `labels` is shared by catch-ups reading in other threads, which
    # may clear it meanwhile.
    mine: SeriesLabels = {}
    missing: set[int] = set()
    for sid in set(ids):
        known = labels.get(sid)
        if known is None:
            missing.add(sid)
        else:
            mine[sid] = known
    if missing:
        firsts = [i for i, sid in enumerate(ids) if sid in missing]
        firsts = list({ids[i]: i for i in reversed(firsts)}.values())
        stored = table.column("labels").take(pa.array(firsts)).to_pylist()
        found = {
            ids[i]: labels_of(dict(pairs) if pairs is not None else None)
            for i, pairs in zip(firsts, stored, strict=True)
        }
        mine.update(found)
        if len(labels) + len(found) > MAX_LABELS:
            labels.clear()
        labels.update(found)
    columns = [table.column(name).to_pylist() for name in _PLAIN]
    return [
        Row(seq, batch, times[us], sid, tenant, tool, session, source, name, mine[sid], kind,
            value, delta)
        for seq, batch, us, sid, tenant, tool, session, source, name, kind, value, delta in zip(
            columns[0], columns[1], micros, ids, *columns[2:], strict=True
        )
    ]  # fmt: skip


_PLAIN = ("seq", "batch", "tenant_id", "tool_id", "session_id", "source", "name", "kind",
          "value", "delta")  # fmt: skip


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
    return min(batch_end(cur, probe), head)


def batch_end(cur: duckdb.DuckDBPyConnection, seq: int) -> int:
    """The last seq of the committed batch holding `seq`; `seq` itself when none holds it
    (not committed yet, or between batches)."""
    (end,) = cur.execute(_BATCH_END, {"seq": seq}).fetchall()[0]
    return int(end) if end is not None else seq
