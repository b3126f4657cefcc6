"""Deltas for the live tail without re-reading history on every tick.

The tail remembers each series' latest sample (bounded, least recently used first out).
New rows that arrive in time order get their delta from it, exactly as the view would
give it, computed per column. A series it does not remember is looked up once, for all
such series of a read. A row older than its series' latest (a backdated push) sends that
read to the exact SQL path, which sees every row."""

from collections import OrderedDict
from typing import NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.db import arrow
from schemas.deltas import CUMULATIVE
from stream.batches import Batch, KnownSeries, batches_of, block_of, read_batches, read_failures

SeriesKey = int  # series_id
MAX_SERIES = 200_000


class Last(NamedTuple):
    ts_us: int
    seq: int
    value: float


_NEW_ROWS = """
SELECT seq, batch, ts, series_id, kind, value FROM points
WHERE seq > $after AND seq <= $upto ORDER BY seq
"""
_LAST_OF = """
SELECT series_id, epoch_us(ts), seq, value FROM points
WHERE series_id IN (SELECT unnest($ids)) AND seq <= $after
QUALIFY row_number() OVER (PARTITION BY series_id ORDER BY ts DESC, seq DESC) = 1
"""


class SeriesCache:
    """The latest sample of recently seen series; `None` records "has no earlier sample".
    It also keeps the series' strings (`known`), read once per series."""

    def __init__(self, max_series: int = MAX_SERIES) -> None:
        self._last: OrderedDict[SeriesKey, Last | None] = OrderedDict()
        self._max = max_series
        self.known = KnownSeries()

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
    table = arrow(cur, _NEW_ROWS, {"after": after, "upto": upto})
    n = table.num_rows
    if not n:
        return []
    sid = table.column("series_id").to_numpy()
    ts = pc.cast(table.column("ts"), pa.int64()).to_numpy()
    value = table.column("value").to_numpy()
    # Each series' rows together, in seq order; the row before each is its previous sample.
    order = np.argsort(sid, kind="stable")
    s_sid, s_ts, s_value = sid[order], ts[order], value[order]
    first = np.ones(n, bool)
    first[1:] = s_sid[1:] != s_sid[:-1]
    prev_ts, prev_value = np.roll(s_ts, 1), np.roll(s_value, 1)
    has_prev = ~first
    # Before each series' first row: what the cache knows (taken once: it may evict
    # meanwhile), or the store.
    keys = s_sid[first].tolist()
    known: dict[SeriesKey, Last | None] = {}
    missing: list[SeriesKey] = []
    for key in keys:
        if key in cache:
            known[key] = cache.get(key)
        else:
            missing.append(key)
    if missing:
        found = _look_up(cur, missing, after)
        for key in missing:
            known[key] = found.get(key)
    lasts = [known[key] for key in keys]
    at_first = np.flatnonzero(first)
    prev_ts[at_first] = [last.ts_us if last else 0 for last in lasts]
    prev_value[at_first] = [last.value if last else 0.0 for last in lasts]
    has_prev[at_first] = [last is not None for last in lasts]
    if (has_prev & (s_ts < prev_ts)).any():
        return _exact(cur, cache, after, upto)  # a backdated row: let SQL order it
    kind = table.column("kind")
    own = pc.equal(kind, "delta").to_numpy(zero_copy_only=False)[order]
    counted = pc.is_in(kind, pa.array(CUMULATIVE)).to_numpy(zero_copy_only=False)[order]
    counted &= has_prev
    s_delta = np.where(own, s_value, np.where(s_value >= prev_value, s_value - prev_value,
                                              s_value))  # fmt: skip
    delta, has_delta = np.empty(n), np.empty(n, bool)
    delta[order], has_delta[order] = s_delta, own | counted
    delta[~has_delta] = 0.0
    # Each series' latest is now its last row here.
    last_rows = np.flatnonzero(np.r_[first[1:], True])
    for key, t, s, v in zip(keys, s_ts[last_rows].tolist(),
                            table.column("seq").to_numpy()[order][last_rows].tolist(),
                            s_value[last_rows].tolist(), strict=True):  # fmt: skip
        cache.put(key, Last(t, s, v))
    block = block_of(table, delta, has_delta, cache.known, cur)
    return batches_of(block, read_failures(cur, int(block.batch[0]), int(block.batch[-1])))


def _exact(
    cur: duckdb.DuckDBPyConnection, cache: SeriesCache, after: int, upto: int
) -> list[Batch]:
    batches = read_batches(cur, after, upto, cache.known)
    # Which sample is now a series' latest may lie outside this read (an older row with a
    # later ts): forget these series, so their next read looks them up exactly.
    if batches:  # one block
        for key in np.unique(batches[0].block.series_id).tolist():
            cache.forget(key)
    return batches
