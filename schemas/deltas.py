"""The delta rule in Python: per sample for the live stream, per Arrow table for the short
raw tail of a history query. Both must agree with the SQL macro `sample_delta` and the
`point_deltas` view in views.py, which define the truth (tests check all three)."""

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Every delta is computed within one series: one id (schemas/views.py).
SERIES_COLUMNS = ("series_id",)
CUMULATIVE = ("counter", "untyped")  # kinds whose delta is the rise since the last sample


def sample_delta(kind: str, value: float, prev: float | None) -> float | None:
    """A counter's rise since `prev`, or its whole value where it dropped (a restart);
    a `delta` sample is its own increment; gauges and first samples have none."""
    if kind == "delta":
        return value
    if kind in CUMULATIVE and prev is not None:
        return value - prev if value >= prev else value
    return None


def same_as_previous(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """For each row, whether the row before it holds the same values in `columns`, NULL
    matching NULL (as `IS NOT DISTINCT FROM`); the first row has no row before it."""
    n = table.num_rows
    same = np.ones(n, dtype=bool)
    if n == 0:
        return same
    same[0] = False
    for name in columns:
        column = table.column(name)
        if column.null_count == n:  # all NULL: every row matches the one before
            continue
        now, before = column.slice(1), column.slice(0, n - 1)
        if column.null_count == 0:
            same[1:] &= pc.equal(now, before).to_numpy()
            continue
        equal = pc.fill_null(pc.equal(now, before), False)
        both_null = pc.and_(pc.is_null(now), pc.is_null(before))
        same[1:] &= pc.or_(equal, both_null).to_numpy()
    return same


def with_deltas(rows: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """`rows` (`series_id`, `ts`, `seq`, `kind`, `value`) sorted by series, `ts`
    and `seq`, with a `delta` column: each row's `sample_delta` against the row before it
    in its series, as the `sample_deltas` view computes it over the same rows. Also, per
    row, whether a row of its series comes before it (False for each series' first)."""
    order, delta, has, follows = _in_series_order(rows)
    rows = rows.take(order).combine_chunks()
    return rows.append_column("delta", pa.array(delta, mask=~has)), follows


def deltas_of(rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """`with_deltas`'s deltas, in the order of `rows`: each row's delta (anything where it
    has none) and whether it has one."""
    order, sorted_delta, sorted_has, _ = _in_series_order(rows)
    delta, has = np.empty_like(sorted_delta), np.empty_like(sorted_has)
    delta[order], has[order] = sorted_delta, sorted_has
    return delta, has


def _in_series_order(rows: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The order of `rows` by series, `ts` and `seq`, and in that order each row's delta,
    whether it has one, and whether a row of its series comes before it. Only the sort
    keys are sorted as a table; the rest is taken in that order as NumPy arrays."""
    order = _series_order(rows)
    n = len(order)
    value = rows.column("value").to_numpy()[order]
    prev = np.roll(value, 1)
    kind = rows.column("kind")
    own = pc.equal(kind, "delta").to_numpy()[order]
    (series,) = (rows.column(name) for name in SERIES_COLUMNS)
    if series.null_count:
        follows = same_as_previous(rows.select(SERIES_COLUMNS).take(order), SERIES_COLUMNS)
    else:
        ids = series.to_numpy()[order]
        follows = np.zeros(n, bool)
        follows[1:] = ids[1:] == ids[:-1]
    counted = pc.is_in(kind, pa.array(CUMULATIVE)).to_numpy()[order] & follows
    with np.errstate(over="ignore", invalid="ignore"):  # masked rows may hold anything
        rise = np.where(value >= prev, value - prev, value)
    delta = np.where(own, value, rise)
    return order, delta, own | counted, follows


def _series_order(rows: pa.Table) -> np.ndarray:
    """The order of `rows` by series, `ts` and `seq`: where they already are in (ts, seq)
    order (a page of ticks after the ticks before it), a stable sort by series alone
    (half the time of the three keys)."""
    names = [*SERIES_COLUMNS, "ts", "seq"]
    if rows.num_rows > 1 and not any(rows.column(name).null_count for name in names):
        dts = np.diff(pc.cast(rows.column("ts"), pa.int64()).to_numpy())
        dseq = np.diff(rows.column("seq").to_numpy())
        if ((dts > 0) | ((dts == 0) & (dseq > 0))).all():
            names = list(SERIES_COLUMNS)
    keys = [(name, "ascending") for name in names]
    order: np.ndarray = pc.sort_indices(rows.select(names), sort_keys=keys).to_numpy()
    return order
