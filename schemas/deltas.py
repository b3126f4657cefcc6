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
    keys = [(name, "ascending") for name in (*SERIES_COLUMNS, "ts", "seq")]
    rows = rows.take(pc.sort_indices(rows, sort_keys=keys)).combine_chunks()
    value = rows.column("value").to_numpy()
    prev = np.roll(value, 1)
    kind = rows.column("kind")
    own = pc.equal(kind, "delta").to_numpy()
    follows = same_as_previous(rows, SERIES_COLUMNS)
    counted = pc.is_in(kind, pa.array(CUMULATIVE)).to_numpy() & follows
    with np.errstate(over="ignore", invalid="ignore"):  # masked rows may hold anything
        rise = np.where(value >= prev, value - prev, value)
    delta = np.where(own, value, rise)
    return rows.append_column("delta", pa.array(delta, mask=~(own | counted))), follows
