"""Hourly rollups per series id: materializing closed time (by the writer), and the
watermark that reads use.

`rollup_until` is whole epoch seconds on a minute boundary: every hour before it is
materialized, the hour it falls in only up to it (a partial row, rebuilt whole at each
refresh). Everything here is exact: a rollup row holds the same sum of `sample_deltas`
the view gives for the time it covers.
"""

from datetime import datetime

import duckdb

HOUR = 3600
MINUTE = 60

_WATERMARKS = """
SELECT max(CASE WHEN key = 'rollup_until' THEN CAST(value AS BIGINT) END),
       max(CASE WHEN key = 'rollup_seq' THEN CAST(value AS BIGINT) END)
FROM meta WHERE key IN ('rollup_until', 'rollup_seq')
"""
_MARKS = f"SELECT *, (SELECT coalesce(max(seq), 0) FROM points) FROM ({_WATERMARKS})"
# The earliest ts among rows the rollup has not considered but that fall before its end.
_LATE = "SELECT min(ts) FROM points WHERE seq > $seq AND ts < to_timestamp($until)"
_REBUILD = """
INSERT INTO rollup_hourly
SELECT to_timestamp(CAST(floor(epoch(ts) / 3600) AS BIGINT) * 3600) AS hour,
       series_id, sum(delta)
FROM point_deltas_between(to_timestamp($start), to_timestamp($end))
WHERE delta IS NOT NULL
GROUP BY ALL
"""


def _hour_floor(ts: datetime) -> int:
    return int(ts.timestamp()) // HOUR * HOUR


def valid_until(cur: duckdb.DuckDBPyConnection) -> int:
    """Epoch seconds before which `rollup_hourly` is exact right now."""
    until, seq = cur.execute(_WATERMARKS).fetchall()[0]
    return _valid(cur, until, seq)


def marks(cur: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """`valid_until` and the last committed seq, read together (in the caller's snapshot
    when it holds a transaction)."""
    until, seq, head = cur.execute(_MARKS).fetchall()[0]
    return _valid(cur, until, seq), int(head)


def _valid(cur: duckdb.DuckDBPyConnection, until: int, seq: int) -> int:
    (late,) = cur.execute(_LATE, {"seq": seq, "until": until}).fetchall()[0]
    return int(until) if late is None else min(int(until), _hour_floor(late))


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
    start = valid // HOUR * HOUR  # the hour the watermark is in is rebuilt whole
    if head is None:
        (head,) = cur.execute("SELECT coalesce(max(seq), 0) FROM points").fetchall()[0]
    end = max(int(until), (int(now.timestamp()) - grace_seconds) // MINUTE * MINUTE)
    if valid == 0:  # first refresh: start at the first hour with data
        (first,) = cur.execute("SELECT min(ts) FROM points").fetchall()[0]
        start = _hour_floor(first) if first is not None else end
    if start < end:
        cur.execute("DELETE FROM rollup_hourly WHERE hour >= to_timestamp($s)", {"s": start})
        cur.execute(_REBUILD, {"start": start, "end": end})
    cur.execute("UPDATE meta SET value = $v WHERE key = 'rollup_until'", {"v": str(end)})
    cur.execute("UPDATE meta SET value = $v WHERE key = 'rollup_seq'", {"v": str(head)})
    return end
