"""Deltas for the live tail without re-reading history on every tick.

The tail remembers each series' latest sample (bounded, least recently used first out).
New rows that arrive in time order get their delta from it, exactly as the view would
give it. A series it does not remember is looked up once, for all such series of a read.
A row older than its series' latest (a backdated push) sends that read to the exact SQL
path, which sees every row."""

from collections import OrderedDict
from datetime import datetime
from typing import NamedTuple

import duckdb
import pyarrow as pa

from schemas.deltas import sample_delta
from stream.batches import Batch, Row, group_batches, read_batches, read_failures

SeriesKey = tuple[str, str | None, str | None, str, str]
MAX_SERIES = 200_000


class Last(NamedTuple):
    ts: datetime
    seq: int
    value: float


_NEW_ROWS = """
SELECT seq, batch, ts, tenant_id, tool_id, session_id, source, metric, kind, value
FROM samples WHERE seq > $after AND seq <= $upto ORDER BY seq
"""
_LAST_OF = """
SELECT s.tenant_id, s.tool_id, s.session_id, s.source, s.metric, s.ts, s.seq, s.value
FROM samples s
SEMI JOIN wanted_series w
    ON s.tenant_id = w.tenant_id AND s.tool_id IS NOT DISTINCT FROM w.tool_id
    AND s.session_id IS NOT DISTINCT FROM w.session_id
    AND s.source = w.source AND s.metric = w.metric
WHERE s.seq <= $after
QUALIFY row_number() OVER (
    PARTITION BY s.tenant_id, s.tool_id, s.session_id, s.source, s.metric
    ORDER BY s.ts DESC, s.seq DESC) = 1
"""


class SeriesCache:
    """The latest sample of recently seen series; `None` records "has no earlier sample"."""

    def __init__(self, max_series: int = MAX_SERIES) -> None:
        self._last: OrderedDict[SeriesKey, Last | None] = OrderedDict()
        self._max = max_series

    def __contains__(self, key: SeriesKey) -> bool:
        return key in self._last

    def get(self, key: SeriesKey) -> Last | None:
        self._last.move_to_end(key)
        return self._last[key]

    def forget(self, key: SeriesKey) -> None:
        self._last.pop(key, None)

    def put(self, key: SeriesKey, last: Last | None) -> None:
        self._last[key] = last
        self._last.move_to_end(key)
        while len(self._last) > self._max:
            self._last.popitem(last=False)


def _key(row: tuple[object, ...]) -> SeriesKey:
    return row[3], row[4], row[5], row[6], row[7]  # type: ignore[return-value]


def _look_up(
    cur: duckdb.DuckDBPyConnection, keys: list[SeriesKey], after: int
) -> dict[SeriesKey, Last]:
    cols = list(zip(*keys, strict=True))
    wanted = pa.table(
        {name: pa.array(col, pa.string()) for name, col in
         zip(("tenant_id", "tool_id", "session_id", "source", "metric"), cols, strict=True)}
    )  # fmt: skip
    cur.register("wanted_series", wanted)
    try:
        found = cur.execute(_LAST_OF, {"after": after}).fetchall()
    finally:
        cur.unregister("wanted_series")
    return {(r[0], r[1], r[2], r[3], r[4]): Last(r[5], r[6], r[7]) for r in found}


def read_live(
    cur: duckdb.DuckDBPyConnection, cache: SeriesCache, after: int, upto: int
) -> list[Batch]:
    """Batches in seq (after, upto] with their deltas, keeping `cache` current."""
    raw = cur.execute(_NEW_ROWS, {"after": after, "upto": upto}).fetchall()
    if not raw:
        return []
    # What this read knows of each series, taken once: the cache may evict meanwhile.
    known: dict[SeriesKey, Last | None] = {}
    missing: list[SeriesKey] = []
    for key in dict.fromkeys(map(_key, raw)):
        if key in cache:
            known[key] = cache.get(key)
        else:
            missing.append(key)
    if missing:
        found = _look_up(cur, missing, after)
        for key in missing:
            known[key] = found.get(key)
    rows: list[Row] = []
    for r in raw:
        key = _key(r)
        prev = known[key]
        ts, seq, value = r[2], r[0], r[9]
        if prev is not None and (ts, seq) < (prev.ts, prev.seq):
            return _exact(cur, cache, after, upto)  # a backdated row: let SQL order it
        known[key] = Last(ts, seq, value)
        delta = sample_delta(r[8], value, prev.value if prev else None)
        rows.append(Row(seq, r[1], ts, r[3], r[4], r[5], r[6], r[7], r[8], value, delta))
    for key, last in known.items():
        cache.put(key, last)
    return group_batches(rows, read_failures(cur, rows[0].batch, rows[-1].batch))


def _exact(
    cur: duckdb.DuckDBPyConnection, cache: SeriesCache, after: int, upto: int
) -> list[Batch]:
    batches = read_batches(cur, after, upto)
    # Which sample is now a series' latest may lie outside this read (an older row with a
    # later ts): forget these series, so their next read looks them up exactly.
    for batch in batches:
        for row in batch.rows:
            cache.forget((row.tenant_id, row.tool_id, row.session_id, row.source, row.metric))
    return batches
