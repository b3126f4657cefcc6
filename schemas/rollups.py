"""Rollups per series id in three tiers (1 m, 1 h, 1 d): materializing closed time (by the
writer), and the watermark that reads use.

`rollup_until` is whole epoch seconds on a minute boundary: every hour before it is
materialized, and the hour and the day it falls in up to it (partial rows, rebuilt whole
at each refresh). The hour tier is built from raw rows, the day tier from hours; the
minute tier holds only time whose raw rows retention deleted (`keep_minutes`, just
before it deletes them). Everything here is exact: a rollup row holds the same sum of
`point_deltas` the view gives for the time it covers.

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
_DELETE_HOURS = f"""
{_CUT}
DELETE FROM rollup_hourly h
WHERE h.hour >= to_timestamp($start)
  AND NOT EXISTS (SELECT 1 FROM cut c WHERE c.series_id = h.series_id AND h.hour < c.raw_from)
"""
# A tier's rows from raw rows in [$start, $end), for the series `{series}` selects.
_FROM_RAW = """
INSERT INTO {tier}
SELECT to_timestamp(CAST(floor(epoch(d.ts) / {seconds}) AS BIGINT) * {seconds}), d.series_id,
       sum(d.delta)
FROM point_deltas_between(to_timestamp($start), to_timestamp($end)) d
WHERE d.delta IS NOT NULL AND {series}
GROUP BY ALL
ORDER BY ALL  -- in time order: zone maps skip old rows, and times and ids compress
"""
_NOT_CUT = "NOT EXISTS (SELECT 1 FROM cut c WHERE c.series_id = d.series_id AND d.ts < c.raw_from)"
_DAYS_FROM_HOURS = """
INSERT INTO rollup_daily
SELECT to_timestamp(CAST(floor(epoch(hour) / 86400) AS BIGINT) * 86400), series_id,
       sum(increase)
FROM rollup_hourly WHERE hour >= to_timestamp($start)
GROUP BY ALL
ORDER BY ALL
"""


def _floor(ts: datetime, seconds: int) -> int:
    return int(ts.timestamp()) // seconds * seconds


def keep_minutes(
    cur: duckdb.DuckDBPyConnection, start: int, end: int, series: str, args: dict[str, object]
) -> None:
    """Materialize the 1 m tier over [start, end) for the series `series` (a condition on
    `d.series_id`) selects, from their raw rows, which retention is about to delete: while
    raw rows exist they answer every step the minute tier would, so it holds only time
    whose raw rows are gone (none at all when it is kept no longer than they are)."""
    if start < end:
        sql = _FROM_RAW.format(tier=MINUTES.table, seconds=MINUTE, series=series)
        cur.execute(sql, {**args, "start": start, "end": end})


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
        hour = start // HOUR * HOUR  # the watermark's hour is rebuilt whole
        cur.execute(_DELETE_HOURS, {"start": hour})
        rebuild = _CUT + _FROM_RAW.format(tier=HOURS.table, seconds=HOUR, series=_NOT_CUT)
        cur.execute(rebuild, {"start": hour, "end": end})
        day = {"start": start // DAY * DAY}
        cur.execute("DELETE FROM rollup_daily WHERE day >= to_timestamp($start)", day)
        cur.execute(_DAYS_FROM_HOURS, day)
    cur.execute("UPDATE meta SET value = $v WHERE key = 'rollup_until'", {"v": str(end)})
    cur.execute("UPDATE meta SET value = $v WHERE key = 'rollup_seq'", {"v": str(head)})
    return end
