"""Increases over time: hourly rollups for the closed hours, raw rows for the rest.

As TimescaleDB's real-time aggregates do: time below the rollup's exact watermark comes
from `rollup_hourly` (whole hours, and the watermark's own hour up to it); the partial
hour at the start and everything after the watermark come from raw rows. A long raw range
goes through the window macro; a short one (the live tail after the watermark is two or
three minutes) is fetched and the delta rule applied to its rows in Arrow, which spares
planning and scheduling a window query: most of a 24 h question's time otherwise.
Disjoint ranges of raw rows sum to the same as their union, and a rollup hour is that
same sum, so the answer always equals the view's (property tests compare every path).
"""

from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from query.sql import series_where
from schemas.db import arrow
from schemas.deltas import CUMULATIVE, same_as_previous, with_deltas
from schemas.models import GROUP_LABELS, SampleFilters
from schemas.rollups import HOUR, marks

# How far back a raw part looks for each series' previous sample before falling back to
# an exact search of all older rows (only speed depends on it, never the answer).
LOOKBACK_MINUTES = 5
# A raw range up to this long is computed from its rows in Arrow, a longer one in SQL.
ARROW_RAW = timedelta(minutes=15)

_MACRO = (
    "SELECT CAST(floor(epoch(ts) / $step) AS BIGINT) AS b, series_id, delta "
    "FROM point_deltas_between(${a}, ${b}, lookback := INTERVAL {lookback} MINUTE) "
    "WHERE {cond} AND delta IS NOT NULL"
)
_ROLLED = (
    "SELECT CAST(floor(epoch(hour) / $step) AS BIGINT) AS b, series_id, increase AS delta "
    "FROM rollup_hourly WHERE hour >= $r0 AND hour < $r1 AND {cond}"
)
_ROWS = "SELECT ts, seq, series_id, kind, value FROM points WHERE ts >= $a AND ts < $b AND {cond}"
# The last sample before `before` of each series given (as the macro's `older` part).
_OLDER = """
SELECT ts, seq, series_id, kind, value FROM points
WHERE series_id IN (SELECT unnest($ids)) AND ts < $before
QUALIFY row_number() OVER (PARTITION BY series_id ORDER BY ts DESC, seq DESC) = 1
"""


HEAD = "SELECT coalesce(max(seq), 0) FROM points"


class Plan(NamedTuple):
    """Which time comes from where: `rolled` hours from the rollup, `raw` ranges from rows."""

    rolled: tuple[datetime, datetime] | None
    raw: list[tuple[datetime, datetime]]


def plan(start: datetime, end: datetime, step: int, valid: int) -> Plan:
    """Split [start, end) given that `rollup_hourly` is exact before `valid` (epoch s)."""
    if step % HOUR:
        return Plan(None, [(start, end)])
    lo, hi = start.timestamp(), end.timestamp()
    r0 = -(-int(lo) // HOUR) * HOUR
    # A partial row covers its hour up to `valid`: usable only if that is in range.
    r1 = valid if valid <= hi else int(hi) // HOUR * HOUR
    if r0 >= r1:
        return Plan(None, [(start, end)])
    a, b = datetime.fromtimestamp(r0, UTC), datetime.fromtimestamp(r1, UTC)
    return Plan((a, b), [(s, e) for s, e in ((start, a), (b, end)) if s < e])


def _sql_sums(
    cur: duckdb.DuckDBPyConnection,
    cond: str,
    filter_args: dict[str, Any],
    step: int,
    rolled: tuple[datetime, datetime] | None,
    long: list[tuple[datetime, datetime]],
) -> pa.Table:
    """(bucket, series_id, value) rows over the rollup range and long raw ranges, in SQL.
    Rollup rows come as they are (one per hour and series: few, and summed per bucket by
    `gap_filled` anyway; a hash aggregate here costs more than it saves); long raw ranges
    are summed per bucket and series."""
    parts, args = [], {**filter_args, "step": step}
    if rolled is not None:
        parts.append(_ROLLED.format(cond=cond))
        args.update(r0=rolled[0], r1=rolled[1])
    for i, (a, b) in enumerate(long):
        macro = _MACRO.format(cond=cond, a=f"a{i}", b=f"b{i}", lookback=LOOKBACK_MINUTES)
        parts.append(f"SELECT b, series_id, sum(delta) AS delta FROM ({macro}) GROUP BY ALL")
        args.update({f"a{i}": a, f"b{i}": b})
    union = " UNION ALL ".join(parts)
    return _as_sums(arrow(cur, f"SELECT b, series_id, delta AS value FROM ({union})", args))


_SUMS = pa.schema([("b", pa.int64()), ("series_id", pa.int64()), ("value", pa.float64())])


def _as_sums(part: pa.Table) -> pa.Table:
    """A part in the common (bucket, series_id, value) types (DuckDB's and Arrow's
    need not match)."""
    return part.select(_SUMS.names).cast(_SUMS)


# Up to this many series, a query names their ids (a constant list DuckDB checks in
# about half the time of a semi-join); more, and it joins `series_keys` instead.
LISTED_IDS = 1_000
_LOOKUP = "SELECT id AS series_id{sel} FROM series_keys WHERE {cond}"


def series_lookup(
    cur: duckdb.DuckDBPyConnection, filters: SampleFilters, labels: list[str]
) -> tuple[pa.Table, str, dict[str, Any]]:
    """The series the filters select, with their group labels (one small query), and the
    condition on `series_id` that selects them in `points` and `rollup_hourly`."""
    cond, args = series_where(filters)
    exprs = [_group_expr(label, i) for i, label in enumerate(labels)]
    lookup_args = {**args, **{f"g{i}": name for i, (_, name) in enumerate(exprs) if name}}
    sel = "".join(sql for sql, _ in exprs)
    lookup = arrow(cur, _LOOKUP.format(sel=sel, cond=cond), lookup_args)
    if cond == "TRUE":
        return lookup, "TRUE", {}
    if lookup.num_rows <= LISTED_IDS:
        return lookup, "list_contains($ids, series_id)", {"ids": lookup.column(0).to_pylist()}
    return lookup, f"series_id IN (SELECT id FROM series_keys WHERE {cond})", args


def raw_deltas(
    cur: duckdb.DuckDBPyConnection,
    cond: str,
    filter_args: dict[str, Any],
    start: datetime,
    end: datetime,
) -> pa.Table:
    """The rows matching `cond` with ts in [start, end) and a delta, with that delta: the
    rows `sample_deltas_between(start, end)` gives, computed from the rows in Arrow."""
    since = start - timedelta(minutes=LOOKBACK_MINUTES)
    rows = arrow(cur, _ROWS.format(cond=cond), {**filter_args, "a": since, "b": end})
    table, follows = with_deltas(rows)
    inside = pc.greater_equal(table.column("ts"), pa.scalar(start)).to_numpy()
    # A counter whose series has no row in the lookback needs its last row before it.
    counter = pc.is_in(table.column("kind"), pa.array(CUMULATIVE)).to_numpy()
    orphans = table.filter(pa.array(~follows & inside & counter))
    if orphans.num_rows:
        ids = pc.unique(orphans.column("series_id")).to_pylist()
        older = arrow(cur, _OLDER, {"ids": ids, "before": since})
        table, _ = with_deltas(pa.concat_tables([rows, older]))
        inside = pc.greater_equal(table.column("ts"), pa.scalar(start)).to_numpy()
    return table.filter(pa.array(inside & table.column("delta").is_valid().to_numpy()))


def _bucketed(deltas: pa.Table, step: int) -> pa.Table:
    """`raw_deltas` rows as (bucket, series_id, value), the shape of the SQL sums."""
    micros = deltas.column("ts").cast(pa.int64()).to_numpy()
    buckets = pa.array(micros // (step * 1_000_000))
    return pa.table({"b": buckets, "series_id": deltas.column("series_id").cast(pa.int64()),
                     "value": deltas.column("delta").cast(pa.float64())})  # fmt: skip


def _group_expr(label: str, i: int) -> tuple[str, str | None]:
    """SQL for one group label (a fixed column, or `labels.NAME` bound as a parameter);
    `label` is from the allow-list GROUP_LABELS or matched `labels.NAME`, never free text."""
    if label in GROUP_LABELS:
        return f", {label} AS g{i}", None
    return f", labels[$g{i}] AS g{i}", label.removeprefix("labels.")


def gap_filled(
    sums: pa.Table, lookup: pa.Table, labels: list[str], first: int, last: int, step: int
) -> pa.Table:
    """The sums (rows of bucket, series_id, value) per bucket from `first` to `last` and
    per group of `labels` seen (0 where a group has nothing in a bucket), ordered by bucket,
    then group (NULLs first); one group if there are no labels. Each series' group comes
    from `lookup` (series_id, g0, g1, ...): groups are formed over the series, never by
    sorting the rows."""
    n = last - first + 1
    buckets = sums.column("b").to_numpy() - first
    values = sums.column("value").to_numpy()
    columns: dict[str, pa.Array] = {}
    if labels:
        seen = lookup.filter(pc.is_in(lookup.column("series_id"), value_set=sums.column(
            "series_id").unique()))  # fmt: skip
        named = pa.table({label: seen.column(f"g{i}").cast(pa.string())
                          for i, label in enumerate(labels)})  # fmt: skip
        order = pc.sort_indices(named, sort_keys=[(c, "ascending", "at_start") for c in labels])
        named, ids = named.take(order), seen.column("series_id").take(order)
        new_group = ~same_as_previous(named, labels)
        group_of = np.cumsum(new_group) - 1
        groups = int(new_group.sum())
        at = pc.index_in(sums.column("series_id"), value_set=ids).to_numpy()
        cells = buckets * groups + group_of[at]
        heads = np.tile(np.flatnonzero(new_group), n)
        columns = {c: named.column(c).take(pa.array(heads)) for c in labels}
    else:
        groups, cells = 1, buckets
    grid = np.bincount(cells, weights=values, minlength=n * groups)
    times = np.repeat(np.arange(first, last + 1, dtype=np.int64) * step * 1_000_000, groups)
    return pa.table({"t": pa.array(times, pa.timestamp("us", tz="UTC")), **columns,
                     "value": grid})  # fmt: skip


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
    first = int(start.timestamp()) // step
    last = -(-int(end.timestamp() * 1e6) // (step * 1_000_000)) - 1
    cur.begin()  # the watermark and the rows it vouches for, from one snapshot
    try:
        valid, head = marks(cur)
        lookup, cond, filter_args = series_lookup(cur, filters, labels)
        rolled, raw = plan(start, end, step, valid)
        short = [(a, b) for a, b in raw if b - a <= ARROW_RAW]
        long = [(a, b) for a, b in raw if b - a > ARROW_RAW]
        parts = [_SUMS.empty_table()]
        if lookup.num_rows:
            parts += [_bucketed(raw_deltas(cur, cond, filter_args, a, b), step) for a, b in short]
            if rolled is not None or long:
                parts.append(_sql_sums(cur, cond, filter_args, step, rolled, long))
    finally:
        cur.commit()
    return gap_filled(pa.concat_tables(parts), lookup, labels, first, last, step), head
