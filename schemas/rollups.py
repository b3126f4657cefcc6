"""Rollups per series id in three tiers (1 m, 1 h, 1 d): materializing closed time (by the
writer), and the watermark that reads use.

`rollup_until` is whole epoch seconds on a minute boundary: every minute before it is
materialized; the hour and the day it falls in only up to it (partial rows, rebuilt
whole at each refresh). The minute tier is built from raw rows, the hour tier from
minutes, the day tier from hours. Everything here is exact: a rollup row holds the same
sum of `point_deltas` the view gives for the time it covers.

Retention (`schemas.retention`) deletes raw rows before a cutoff, for every series
(`raw_from` in `meta`) or for one tenant's (`tenant_retention`), only once the rollups
cover that time; a refresh never rebuilds a tier from raw rows before a cutoff.
"""

from datetime import datetime
from typing import NamedTuple

import duckdb

MINUTE = 60
HOUR = 3600
DAY = 86_400


class Tier(NamedTuple):
    table: str  # constants, never user input
    column: str  # the start of the time a row covers
    seconds: int


MINUTES = Tier("rollup_minute", "minute", MINUTE)
HOURS = Tier("rollup_hourly", "hour", HOUR)
DAYS = Tier("rollup_daily", "day", DAY)
TIERS = (MINUTES, HOURS, DAYS)  # finest first; each one sums the one before it

_WATERMARKS = """
SELECT max(CASE WHEN key = 'rollup_until' THEN CAST(value AS BIGINT) END),
       max(CASE WHEN key = 'rollup_seq' THEN CAST(value AS BIGINT) END)
FROM meta WHERE key IN ('rollup_until', 'rollup_seq')
"""
_MARKS = f"SELECT *, (SELECT coalesce(max(seq), 0) FROM points) FROM ({_WATERMARKS})"
# The earliest ts among rows the rollup has not considered but that fall before its end.
_LATE = """
SELECT min(ts) FROM points
WHERE seq > $late_seq AND ts < to_timestamp($late_until) AND {series}
"""
# Series whose tenant's raw rows are gone up to a later time than everyone's (a tenant's
# own `retention_days`): their tiers are never rebuilt before it.
_CUT = """
WITH cut AS (
    SELECT k.id AS series_id, to_timestamp(r.raw_from) AS raw_from
    FROM tenant_retention r JOIN series_keys k ON k.tenant_id = r.tenant_id
    WHERE r.raw_from > $start
)
"""
_DELETE_MINUTES = f"""
{_CUT}
DELETE FROM rollup_minute m
WHERE m.minute >= to_timestamp($start)
  AND NOT EXISTS (SELECT 1 FROM cut c WHERE c.series_id = m.series_id AND m.minute < c.raw_from)
"""
_REBUILD_MINUTES = f"""
{_CUT}
INSERT INTO rollup_minute
SELECT to_timestamp(CAST(floor(epoch(d.ts) / 60) AS BIGINT) * 60) AS minute, d.series_id,
       sum(d.delta)
FROM point_deltas_between(to_timestamp($start), to_timestamp($end)) d
WHERE d.delta IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM cut c WHERE c.series_id = d.series_id AND d.ts < c.raw_from)
GROUP BY ALL
"""
# A coarser tier from the one below it, from `$start` (on the coarser tier's boundary).
_SUM_TIER = """
INSERT INTO {coarse}
SELECT to_timestamp(CAST(floor(epoch({fine_at}) / {seconds}) AS BIGINT) * {seconds}),
       series_id, sum(increase)
FROM {fine} WHERE {fine_at} >= to_timestamp($start)
GROUP BY ALL
"""


def _floor(ts: datetime, seconds: int) -> int:
    return int(ts.timestamp()) // seconds * seconds


def valid_until(cur: duckdb.DuckDBPyConnection) -> int:
    """Epoch seconds before which every tier is exact right now."""
    until, seq = cur.execute(_WATERMARKS).fetchall()[0]
    return _valid(cur, until, seq)


def marks(
    cur: duckdb.DuckDBPyConnection, series: str = "TRUE", args: dict[str, object] | None = None
) -> tuple[int, int, int]:
    """`valid_until` for the series that `series` (a condition on `series_id`, with its
    `args`) selects, the last committed seq and `rollup_until` (how far partial rows
    reach), read together (in the caller's snapshot when it holds a transaction). Rollup
    rows are per series: a late row of another series leaves these exact."""
    until, seq, head = cur.execute(_MARKS).fetchall()[0]
    return _valid(cur, until, seq, series, args or {}), int(head), int(until)


def _valid(
    cur: duckdb.DuckDBPyConnection,
    until: int,
    seq: int,
    series: str = "TRUE",
    args: dict[str, object] | None = None,
) -> int:
    params = {**(args or {}), "late_seq": seq, "late_until": until}
    (late,) = cur.execute(_LATE.format(series=series), params).fetchall()[0]
    return int(until) if late is None else min(int(until), _floor(late, HOUR))


def raw_from(cur: duckdb.DuckDBPyConnection) -> int:
    """Epoch seconds before which no series keeps its raw rows (0: all are kept)."""
    (value,) = cur.execute("SELECT value FROM meta WHERE key = 'raw_from'").fetchall()[0]
    return int(value)


class Kept(NamedTuple):
    """From when (epoch seconds, day boundaries; 0: always) a question's series keep their
    raw rows, their minute rollups, and their hour and day rollups."""

    raw: int
    minutes: int
    rollups: int


KEEP_ALL = Kept(0, 0, 0)
_KEPT = """
SELECT greatest(max(CASE WHEN key = 'raw_from' THEN CAST(value AS BIGINT) END),
                (SELECT coalesce(max(raw_from), 0) FROM tenant_retention
                 WHERE $tenant IS NULL OR tenant_id = $tenant)),
       max(CASE WHEN key = 'minute_from' THEN CAST(value AS BIGINT) END),
       max(CASE WHEN key = 'rollup_from' THEN CAST(value AS BIGINT) END)
FROM meta WHERE key IN ('raw_from', 'minute_from', 'rollup_from')
"""


def kept(cur: duckdb.DuckDBPyConnection, tenant_id: str | None) -> Kept:
    """What retention left for one tenant's series (None: any tenant's, the latest cutoff
    of them all)."""
    raw, minutes, rollups = cur.execute(_KEPT, {"tenant": tenant_id}).fetchall()[0]
    return Kept(int(raw), int(minutes), int(rollups))


def refresh(
    cur: duckdb.DuckDBPyConnection,
    now: datetime,
    grace_seconds: int = 120,
    head: int | None = None,
) -> int:
    """Materialize time up to the last minute closed `grace_seconds` ago, redoing what is no
    longer exact; the caller runs this inside its write transaction. Returns the new
    `rollup_until`. `head` is the last committed seq, if the caller (the writer) knows it."""
    until, _ = cur.execute(_WATERMARKS).fetchall()[0]
    valid = valid_until(cur)
    start = valid // MINUTE * MINUTE
    if head is None:
        (head,) = cur.execute("SELECT coalesce(max(seq), 0) FROM points").fetchall()[0]
    end = max(int(until), (int(now.timestamp()) - grace_seconds) // MINUTE * MINUTE)
    if valid == 0:  # first refresh: start at the first hour with data
        (first,) = cur.execute("SELECT min(ts) FROM points").fetchall()[0]
        start = _floor(first, HOUR) if first is not None else end
    # Raw rows before the cutoff are gone; the tiers already hold that time.
    start = max(start, raw_from(cur))
    if start < end:
        cur.execute(_DELETE_MINUTES, {"start": start})
        cur.execute(_REBUILD_MINUTES, {"start": start, "end": end})
        for fine, coarse in zip(TIERS, TIERS[1:], strict=False):
            since = {"start": start // coarse.seconds * coarse.seconds}
            delete = f"DELETE FROM {coarse.table} WHERE {coarse.column} >= to_timestamp($start)"
            cur.execute(delete, since)
            sql = _SUM_TIER.format(
                coarse=coarse.table, fine=fine.table, fine_at=fine.column, seconds=coarse.seconds
            )
            cur.execute(sql, since)
    cur.execute("UPDATE meta SET value = $v WHERE key = 'rollup_until'", {"v": str(end)})
    cur.execute("UPDATE meta SET value = $v WHERE key = 'rollup_seq'", {"v": str(head)})
    return end
