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

from schemas.db import arrow, arrow_with_ids
from stream.batches import Batch, KnownSeries, read_batches, with_deltas_in

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
WHERE series_id IN (SELECT id FROM given_ids) AND seq <= $after
QUALIFY row_number() OVER (PARTITION BY series_id ORDER BY ts DESC, seq DESC) = 1
"""


class SeriesCache:
    """The latest sample of recently seen series; `None` records "has no earlier sample".
    It also holds the series' strings (`known`: read once per series, and shared with the
    catch-ups of the same database when given theirs, `known_series`)."""

    def __init__(self, max_series: int = MAX_SERIES, known: KnownSeries | None = None) -> None:
        self._last: OrderedDict[SeriesKey, Last | None] = OrderedDict()
        self._max = max_series
        self.known = known if known is not None else KnownSeries()

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
    found = arrow_with_ids(cur, _LAST_OF, {"after": after}, keys)
    ids, ts, seqs, values = (c.to_pylist() for c in found.columns)
    return {i: Last(*r) for i, *r in zip(ids, ts, seqs, values, strict=True)}


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
    # Each series' rows together, in seq order.
    order = np.argsort(sid, kind="stable")
    s_sid, s_ts = sid[order], ts[order]
    first = np.ones(n, bool)
    first[1:] = s_sid[1:] != s_sid[:-1]
    prev_ts = np.roll(s_ts, 1)
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
    has_prev = ~first
    has_prev[first] = [last is not None for last in lasts]
    prev_ts[first] = [last.ts_us if last else 0 for last in lasts]
    if (has_prev & (s_ts < prev_ts)).any():
        return _exact(cur, cache, after, upto)  # a backdated row: let SQL order it
    # In time order within each series, so each row's delta is against the one before
    # it, or the one the cache knows.
    before = {key: last for key, last in zip(keys, lasts, strict=True) if last is not None}
    batches = with_deltas_in(cur, table, _as_rows(before, table.schema), cache.known)
    # Each series' latest is now its last row here.
    last_rows = np.flatnonzero(np.r_[first[1:], True])
    seqs = table.column("seq").to_numpy()[order][last_rows].tolist()
    values = table.column("value").to_numpy()[order][last_rows].tolist()
    for key, t, s, v in zip(keys, s_ts[last_rows].tolist(), seqs, values, strict=True):
        cache.put(key, Last(t, s, v))
    return batches


def _as_rows(lasts: dict[SeriesKey, Last], schema: pa.Schema) -> pa.Table:
    """The cache's latest samples as rows of `_NEW_ROWS` (their kind does not matter: a
    delta is decided by the kind of the row it is for)."""
    return pa.table({
        "seq": [last.seq for last in lasts.values()],
        "batch": [0] * len(lasts),
        "ts": pa.array([last.ts_us for last in lasts.values()], pa.timestamp("us", tz="UTC")),
        "series_id": list(lasts),
        "kind": ["gauge"] * len(lasts),
        "value": [last.value for last in lasts.values()],
    }).cast(schema)  # fmt: skip


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
