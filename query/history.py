"""Increases over time: hourly rollups for the closed hours, raw rows for the rest.

As TimescaleDB's real-time aggregates do: time below the rollup's exact watermark comes
from `rollup_hourly` (whole hours, and the watermark's own hour up to it); the partial
hour at the start and everything after the watermark come from the window macro over raw
rows. Disjoint ranges of the macro sum to
the macro over their union, and a rollup hour is that same sum, so the answer always
equals the view's.
"""

from datetime import datetime

import duckdb
import pyarrow as pa

from query.sql import where
from schemas.models import SampleFilters
from schemas.rollups import HOUR, valid_until

# How far back a raw part looks for each series' previous sample before falling back to
# an exact search of all older rows (only speed depends on it, never the answer).
LOOKBACK_MINUTES = 5


def _raw(sel: str, cond: str, a: str, b: str) -> str:
    return (
        f"SELECT CAST(floor(epoch(ts) / $step) AS BIGINT) AS b{sel}, delta "
        f"FROM sample_deltas_between(to_timestamp(${a}), to_timestamp(${b}), "
        f"lookback := INTERVAL {LOOKBACK_MINUTES} MINUTE) "
        f"WHERE {cond} AND delta IS NOT NULL"
    )


def _rolled(sel: str, cond: str) -> str:
    return (
        f"SELECT CAST(floor(epoch(hour) / $step) AS BIGINT) AS b{sel}, increase AS delta "
        f"FROM rollup_hourly WHERE hour >= to_timestamp($r0) AND hour < to_timestamp($r1) "
        f"AND {cond}"
    )


def increase_sql(cond: str, labels: list[str], parts: list[str]) -> str:
    """Sums per step-aligned bucket and group, gap-filled with 0, over the union of `parts`.

    `labels` come from an allow-list (schemas.models.GROUP_LABELS), never from input text.
    """
    sel = "".join(f", {c}" for c in labels)
    joined = "".join(f" AND a.{c} IS NOT DISTINCT FROM g.{c}" for c in labels)
    groups = f"SELECT DISTINCT {', '.join(labels)} FROM agg" if labels else "SELECT 1 AS one"
    union = " UNION ALL ".join(parts)
    return f"""
WITH d AS ({union}),
agg AS (SELECT b{sel}, sum(delta) AS value FROM d GROUP BY ALL),
buckets AS (SELECT unnest(range($first, $last + 1)) AS b),
groups AS ({groups})
SELECT to_timestamp(k.b * $step) AS t{"".join(f", g.{c}" for c in labels)},
       coalesce(a.value, 0) AS value
FROM buckets k CROSS JOIN groups g
LEFT JOIN agg a ON a.b = k.b{joined}
ORDER BY k.b{"".join(f", g.{c} NULLS FIRST" for c in labels)}
"""


HEAD = "SELECT coalesce(max(seq), 0) FROM samples"


def increase_table(
    cur: duckdb.DuckDBPyConnection,
    filters: SampleFilters,
    labels: list[str],
    start: datetime,
    end: datetime,
    step: int,
) -> pa.Table:
    """The increase per bucket of `step` seconds in [start, end), in one snapshot."""
    return increase_snapshot(cur, filters, labels, start, end, step)[0]


def increase_snapshot(
    cur: duckdb.DuckDBPyConnection,
    filters: SampleFilters,
    labels: list[str],
    start: datetime,
    end: datetime,
    step: int,
) -> tuple[pa.Table, int]:
    """`increase_table`, and the last seq of the snapshot it was computed from: a stream
    resumed from that seq extends the answer with no gap and no duplicate."""
    cond, args = where(filters)
    lo, hi = start.timestamp(), end.timestamp()
    args.update(step=step, first=int(lo) // step, last=-(-int(hi * 1e6) // (step * 1_000_000)) - 1)
    sel = "".join(f", {c}" for c in labels)
    cur.begin()  # the watermark and the rows it vouches for, from one snapshot
    try:
        parts = [_raw(sel, cond, "start", "end")]
        args.update(start=lo, end=hi)
        if step % HOUR == 0:
            r0 = -(-int(lo) // HOUR) * HOUR
            valid = valid_until(cur)
            # A partial row covers its hour up to `valid`: usable only if that is in range.
            r1 = valid if valid <= hi else int(hi) // HOUR * HOUR
            if r0 < r1:
                parts = [_rolled(sel, cond)]
                args.update(r0=r0, r1=r1)
                if lo < r0:
                    parts.append(_raw(sel, cond, "start", "r0"))
                if r1 < hi:
                    parts.append(_raw(sel, cond, "r1", "end"))
        unused = {"start", "end", "r0", "r1"} - {
            name for part in parts for name in ("start", "end", "r0", "r1") if f"${name}" in part
        }
        for name in unused:
            args.pop(name, None)
        table: pa.Table = cur.sql(increase_sql(cond, labels, parts), params=args).to_arrow_table()
        (head,) = cur.execute(HEAD).fetchall()[0]
        return table, int(head)
    finally:
        cur.commit()
