"""The short raw ranges of a history query are computed in Arrow from their rows; they must
give exactly the rows and deltas the `sample_deltas` view gives over the same time."""

import random
import tempfile
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from query.history import LOOKBACK_MINUTES, raw_deltas, series_lookup
from query.sql import where
from schemas.db import Database
from schemas.deltas import deltas_of, with_deltas
from schemas.models import SampleFilters
from tests.schemas.test_deltas import POINT, SERIES, T0, counter_rows, insert, point_rows

FILTERS = st.sampled_from(
    [
        SampleFilters(),
        SampleFilters(metric="m.total"),
        SampleFilters(tool_id="cursor"),
        SampleFilters(tenant_id="acme", source="embeddings"),
    ]
)


def _view(cur, filters: SampleFilters, start, end) -> list[tuple]:  # type: ignore[no-untyped-def]
    cond, args = where(filters, start, end)
    return cur.execute(
        f"SELECT seq, delta FROM sample_deltas WHERE {cond} AND delta IS NOT NULL ORDER BY seq",
        args,
    ).fetchall()


def _arrow(cur, filters: SampleFilters, start, end) -> list[tuple]:  # type: ignore[no-untyped-def]
    _, cond, args = series_lookup(cur, filters, [])
    table = raw_deltas(cur, cond, args, start, end)
    pairs = zip(table.column("seq").to_pylist(), table.column("delta").to_pylist(), strict=True)
    return sorted(pairs)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    series=st.lists(SERIES, min_size=1, max_size=6, unique_by=lambda s: s[:5]),
    points=st.lists(POINT, min_size=1, max_size=80),
    window=st.tuples(st.integers(0, 400_000), st.integers(1, 20_000)),
    filters=FILTERS,
    shuffle=st.randoms(use_true_random=False),
)
@example(  # a counter whose previous sample is days before the lookback
    series=[("local", None, None, "embeddings", "m.total", "counter")],
    points=[(0, 0, 100), (0, 200_000, 150), (0, 30, 20)],
    window=(200_000, 600),
    filters=SampleFilters(),
    shuffle=random.Random(0),
)
@example(  # samples with the same ts: their order is their seq
    series=[("local", None, None, "embeddings", "m.total", "counter")],
    points=[(0, 0, 5), (0, 0, 9), (0, 0, 3), (0, 1, 4)],
    window=(0, 60),
    filters=SampleFilters(),
    shuffle=random.Random(0),
)
def test_raw_deltas_are_the_views(
    series: list[tuple],
    points: list[tuple],
    window: tuple[int, int],
    filters: SampleFilters,
    shuffle: random.Random,
) -> None:
    rows = point_rows(series, points)
    start = T0 + timedelta(seconds=window[0])
    end = start + timedelta(seconds=window[1])
    before = start - timedelta(minutes=LOOKBACK_MINUTES)
    event(f"a sample before the lookback: {any(r[2] < before for r in rows)}")
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp) / "r.duckdb")
        try:
            cur = db.cursor()
            shuffle.shuffle(rows)  # stored order is not seq order
            insert(cur, rows)
            assert _arrow(cur, filters, start, end) == _view(cur, filters, start, end)
        finally:
            db.close()


def test_with_deltas_counts_a_restart_as_new_work() -> None:
    rows = counter_rows([1000, 1010, 1015, 5, 12])
    names = ["seq", "batch", "ts", "tenant_id", "tool_id", "session_id", "source", "metric",
             "kind", "value"]  # fmt: skip
    table = pa.table({name: [r[i] for r in reversed(rows)] for i, name in enumerate(names)})
    table = table.append_column("series_id", pa.array([7] * table.num_rows, pa.int64()))
    got, follows = with_deltas(table)
    assert follows.tolist() == [False, True, True, True, True]
    assert got.column("seq").to_pylist() == [1, 2, 3, 4, 5]
    assert got.column("delta").to_pylist() == [None, 10, 5, 5, 7]


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 3),  # series
            st.integers(0, 5),  # ts (ties on purpose)
            st.sampled_from(["counter", "gauge", "delta", "untyped"]),
            st.sampled_from([0.0, 1.0, 2.5, 7.0, -1.0, float("nan"), float("inf")]),
        ),
        max_size=40,
    ),
    shuffle=st.randoms(use_true_random=False),
)
def test_deltas_in_place_are_with_deltas_in_its_order(
    rows: list[tuple[int, int, str, float]], shuffle: random.Random
) -> None:
    """`deltas_of` (each row's delta where it stands) is `with_deltas` (rows in series
    order) put back in the rows' own order."""
    order = list(range(len(rows)))
    shuffle.shuffle(order)  # seq is not the rows' order
    table = pa.table({
        "seq": pa.array([order[i] for i in range(len(rows))], pa.int64()),
        "ts": pa.array([T0 + timedelta(seconds=r[1]) for r in rows], pa.timestamp("us", "UTC")),
        "series_id": pa.array([r[0] for r in rows], pa.int64()),
        "kind": pa.array([r[2] for r in rows], pa.string()),
        "value": pa.array([r[3] for r in rows], pa.float64()),
    })  # fmt: skip
    delta, has = deltas_of(table)
    ordered, _ = with_deltas(table)
    by_seq = dict(zip(ordered.column("seq").to_pylist(), ordered.column("delta").to_pylist(),
                      strict=True))  # fmt: skip
    got = [float(d) if h else None for d, h in zip(delta, has, strict=True)]
    want = [by_seq[s] for s in table.column("seq").to_pylist()]
    assert [repr(g) for g in got] == [repr(w) for w in want]  # NaN as NaN
