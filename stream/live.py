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

from schemas.deltas import sample_delta
from stream.batches import Batch, Row, group_batches, labels_of, read_batches, read_failures

SeriesKey = int  # series_id
MAX_SERIES = 200_000


class Last(NamedTuple):
    ts: datetime
    seq: int
    value: float


_NEW_ROWS = """
SELECT p.seq, p.batch, p.ts, p.series_id, k.tenant_id, k.tool_id, k.session_id, k.source,
       k.name, k.labels, p.kind, p.value
FROM points p JOIN series_keys k ON k.id = p.series_id
WHERE p.seq > $after AND p.seq <= $upto ORDER BY p.seq
"""
_LAST_OF = """
SELECT series_id, ts, seq, value FROM points
WHERE series_id IN (SELECT unnest($ids)) AND seq <= $after
QUALIFY row_number() OVER (PARTITION BY series_id ORDER BY ts DESC, seq DESC) = 1
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


def _look_up(
    cur: duckdb.DuckDBPyConnection, keys: list[SeriesKey], after: int
) -> dict[SeriesKey, Last]:
    found = cur.execute(_LAST_OF, {"ids": keys, "after": after}).fetchall()
    return {r[0]: Last(r[1], r[2], r[3]) for r in found}


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
    for key in dict.fromkeys(r[3] for r in raw):
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
        key = r[3]
        prev = known[key]
        ts, seq, value = r[2], r[0], r[11]
        if prev is not None and (ts, seq) < (prev.ts, prev.seq):
            return _exact(cur, cache, after, upto)  # a backdated row: let SQL order it
        known[key] = Last(ts, seq, value)
        delta = sample_delta(r[10], value, prev.value if prev else None)
        rows.append(Row(seq, r[1], ts, key, r[4], r[5], r[6], r[7], r[8], labels_of(r[9]), r[10],
                        value, delta))  # fmt: skip
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
            cache.forget(row.series_id)
    return batches
