"""Increases over time: rollups for the closed days and hours, raw rows for the rest.

As TimescaleDB's real-time aggregates do: time below the rollup's exact watermark comes
from `rollup_daily` or `rollup_hourly` when the step is a multiple of a day or an hour
(whole days and hours, and the watermark's own day or hour up to it); the partial hours
at the start and everything after the watermark come from raw rows. Time whose raw rows
retention has deleted comes from the tiers alone, the 1 m tier included. A long raw range
goes through the window macro; a short one (the live tail after the watermark is two or
three minutes) is fetched and the delta rule applied to its rows in Arrow, which spares
planning and scheduling a window query: most of a 24 h question's time otherwise.
Disjoint ranges of raw rows sum to the same as their union, and a rollup row is that
same sum, so the answer always equals the view's (property tests compare every path).
"""

import math
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from query.sql import series_where
from schemas.db import arrow, arrow_with_ids
from schemas.deltas import CUMULATIVE, same_as_previous, with_deltas
from schemas.models import GROUP_LABELS, SampleFilters
from schemas.rollups import DAYS, HOURS, KEEP_ALL, MINUTES, Kept, Tier, kept, marks
from schemas.times import rfc3339

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
    "SELECT CAST(floor(epoch({at}) / $step) AS BIGINT) AS b, series_id, increase AS delta "
    "FROM {table} WHERE {at} >= ${r0} AND {at} < ${r1} AND {cond}"
)
_ROWS = "SELECT ts, seq, series_id, kind, value FROM points WHERE ts >= $a AND ts < $b AND {cond}"
# The last sample before `before` of each series given (as the macro's `older` part).
_OLDER = """
SELECT ts, seq, series_id, kind, value FROM points
WHERE series_id IN (SELECT id FROM given_ids) AND ts < $before
QUALIFY row_number() OVER (PARTITION BY series_id ORDER BY ts DESC, seq DESC) = 1
"""


HEAD = "SELECT coalesce(max(seq), 0) FROM points"


class Plan(NamedTuple):
    """Which time comes from where: `rolled` ranges from a rollup tier each, `raw` ranges
    from rows."""

    rolled: list[tuple[Tier, datetime, datetime]]
    raw: list[tuple[datetime, datetime]]


class Expired(ValueError):
    """The question needs raw rows (or rollups) that retention has deleted (422)."""


class Refreshing(Exception):
    """The rollups of time whose raw rows are partly gone wait for a refresh (after a late
    push into it for another tenant's series): answered in a minute (503)."""


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def plan(
    start: datetime,
    end: datetime,
    step: int,
    valid: int,
    kept: Kept = KEEP_ALL,
    until: int | None = None,
) -> Plan:
    """Split [start, end) given that the rollup tiers are exact before `valid` (epoch s),
    materialized up to `until` (when a late row lowered `valid` below it) and hold what
    `kept` says. Time the raw rows still cover reads whole days and hours
    from their tiers when `step` is a multiple of them, the rest from rows; time before
    the raw cutoff reads the tiers alone, the coarsest that fits, which takes a step that is
    a multiple of one and a start and end on its boundaries (else `Expired`)."""
    lo, hi = start.timestamp(), end.timestamp()
    _check_kept(start, end, step, kept)
    if lo < kept.raw and valid < min(hi, kept.raw):
        raise Refreshing(
            "the rollups of this time are being brought up to date after a late push "
            "(some of its raw samples are no longer kept); retry in a minute"
        )
    out = Plan([], [])

    def at(t: float) -> datetime:  # the caller's own bounds exactly, else whole seconds
        return start if t == lo else end if t == hi else _at(int(t))

    def cover(a: float, b: float, tiers: tuple[Tier, ...]) -> None:
        if a >= b:
            return
        if not tiers:
            out.raw.append((at(a), at(b)))
            return
        tier, finer = tiers[0], tiers[1:]
        r0 = math.ceil(a / tier.seconds) * tier.seconds
        # A partial row covers its hour or day up to `until`: usable only if that is in
        # range and exact (a late row lowers `valid` to an hour, under its day's row).
        whole = valid % tier.seconds == 0 or valid == (valid if until is None else until)
        if valid <= b and whole:
            r1 = valid
        else:
            r1 = math.floor(min(b, valid) / tier.seconds) * tier.seconds
        if r0 >= r1:
            cover(a, b, finer)
            return
        out.rolled.append((tier, _at(r0), _at(r1)))
        cover(a, r0, finer)
        cover(r1, b, finer)

    fits = tuple(t for t in (DAYS, HOURS, MINUTES) if step % t.seconds == 0)
    raw_from = min(max(lo, kept.raw), hi)
    minute_from = min(max(lo, kept.minutes), raw_from)
    cover(lo, minute_from, tuple(t for t in fits if t is not MINUTES))
    cover(minute_from, raw_from, fits)
    # Where raw rows exist, they answer what the hour and day tiers do not (the minute
    # tier would save little over them and is kept for the time they no longer cover).
    cover(raw_from, hi, tuple(t for t in fits if t is not MINUTES))
    return out


def _check_kept(start: datetime, end: datetime, step: int, kept: Kept) -> None:
    """Expired unless the tiers alone can answer the time before the raw cutoff."""
    lo, hi = start.timestamp(), end.timestamp()
    if lo < kept.rollups:
        raise Expired(
            f"`from`: nothing before {rfc3339(_at(kept.rollups))} is kept (retention); "
            "ask from then on"
        )
    if lo >= kept.raw:
        return
    finest = MINUTES if lo >= kept.minutes else HOURS
    where = f"raw samples before {rfc3339(_at(kept.raw))} are no longer kept (retention)"
    if step % finest.seconds:
        raise Expired(f"`step`: {where}; before then, steps are whole multiples of "
                      f"{finest.seconds} s (the {finest.column} rollups)")  # fmt: skip
    for name, at in (("from", lo), ("to", hi)):
        if at < kept.raw and at % finest.seconds:
            raise Expired(f"`{name}`: {where}; before then, it must be on a whole "
                          f"{finest.column} (UTC)")  # fmt: skip


def _sql_sums(
    cur: duckdb.DuckDBPyConnection,
    cond: str,
    filter_args: dict[str, Any],
    step: int,
    rolled: list[tuple[Tier, datetime, datetime]],
    long: list[tuple[datetime, datetime]],
) -> pa.Table:
    """(bucket, series_id, value) rows over the rollup range and long raw ranges, in SQL.
    Rollup rows come as they are (one per hour and series: few, and summed per bucket by
    `gap_filled` anyway; a hash aggregate here costs more than it saves); long raw ranges
    are summed per bucket and series."""
    parts, args = [], {**filter_args, "step": step}
    for i, (tier, r0, r1) in enumerate(rolled):
        parts.append(_ROLLED.format(at=tier.column, table=tier.table, r0=f"r{i}", r1=f"s{i}",
                                    cond=cond))  # fmt: skip
        args.update({f"r{i}": r0, f"s{i}": r1})
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
        ids = pc.unique(orphans.column("series_id"))
        older = arrow_with_ids(cur, _OLDER, {"before": since}, ids)
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
        lookup, cond, filter_args = series_lookup(cur, filters, labels)
        valid, head, until = marks(cur, cond, filter_args)
        rolled, raw = plan(start, end, step, valid, kept(cur, filters.tenant_id), until)
        short = [(a, b) for a, b in raw if b - a <= ARROW_RAW]
        long = [(a, b) for a, b in raw if b - a > ARROW_RAW]
        parts = [_SUMS.empty_table()]
        if lookup.num_rows:
            parts += [_bucketed(raw_deltas(cur, cond, filter_args, a, b), step) for a, b in short]
            if rolled or long:
                parts.append(_sql_sums(cur, cond, filter_args, step, rolled, long))
    finally:
        cur.commit()
    return gap_filled(pa.concat_tables(parts), lookup, labels, first, last, step), head
