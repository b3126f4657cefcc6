"""The `sample_deltas` view defines the truth; the windowed macro must agree exactly."""

import random
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.db import Database
from schemas.deltas import deltas_of, sample_delta

T0 = datetime(2026, 1, 1, tzinfo=UTC)
COLUMNS = ["seq", "batch", "ts", "tenant_id", "tool_id", "session_id", "source", "metric",
           "kind", "value"]  # fmt: skip


_SAME_SERIES = """
    k.tenant_id = r.tenant_id AND k.tool_id IS NOT DISTINCT FROM r.tool_id
    AND k.session_id IS NOT DISTINCT FROM r.session_id AND k.source = r.source
    AND k.metric = r.metric AND cardinality(k.labels) = 0
"""
_NEW_SERIES = f"""
INSERT INTO series_keys
SELECT (SELECT coalesce(max(id), 0) FROM series_keys) + row_number() OVER (),
       tenant_id, tool_id, session_id, source, metric, MAP {{}}::MAP(VARCHAR, VARCHAR), metric
FROM (SELECT DISTINCT tenant_id, tool_id, session_id, source, metric FROM rows_in r
      WHERE NOT EXISTS (SELECT 1 FROM series_keys k WHERE {_SAME_SERIES}))
"""
_POINTS = f"""
INSERT INTO points
SELECT r.seq, r.batch, r.ts, k.id, r.kind, r.value
FROM rows_in r JOIN series_keys k ON {_SAME_SERIES}
"""


def insert(con: duckdb.DuckDBPyConnection, rows: list[tuple[object, ...]]) -> None:
    """Long-form rows (COLUMNS, with their seq and batch) into `series_keys` and `points`,
    as the writer stores them (a series without labels per distinct key)."""
    table = pa.table({name: [r[i] for r in rows] for i, name in enumerate(COLUMNS)})
    con.register("rows_in", table)
    con.execute(_NEW_SERIES)
    con.execute(_POINTS)
    con.unregister("rows_in")


def counter_rows(values: list[float], step: timedelta = timedelta(minutes=1)) -> list[tuple]:
    return [
        (
            i + 1,
            i + 1,
            T0 + i * step,
            "local",
            None,
            None,
            "compression",
            "metrics.total_tokens_saved",
            "counter",
            float(v),
        )  # fmt: skip
        for i, v in enumerate(values)
    ]


def test_counter_reset_counts_new_work_not_negative(db: Database) -> None:
    con = db.cursor()
    insert(con, counter_rows([1000, 1010, 1015, 5, 12]))
    deltas = con.execute("SELECT delta FROM sample_deltas ORDER BY seq").fetchall()
    assert [d for (d,) in deltas] == [None, 10, 5, 5, 7]


def test_gauges_have_no_delta_and_delta_kind_is_its_own_increment(db: Database) -> None:
    con = db.cursor()
    rows = [
        (1, 1, T0, "local", None, None, "e", "hit_rate", "gauge", 0.5),
        (2, 2, T0 + timedelta(seconds=1), "local", None, None, "e", "hit_rate", "gauge", 0.2),
        (3, 3, T0, "local", "t", "s", "push", "tokens_saved", "delta", 40.0),
        (4, 4, T0 + timedelta(seconds=1), "local", "t", "s", "push", "tokens_saved", "delta", 2.0),
    ]
    insert(con, rows)
    got = dict(con.execute("SELECT seq, delta FROM sample_deltas").fetchall())
    assert got == {1: None, 2: None, 3: 40.0, 4: 2.0}


def test_window_macro_looks_back_past_a_long_gap(db: Database) -> None:
    con = db.cursor()
    # Samples two days apart: with a 1 h lookback the previous one is outside it.
    insert(con, counter_rows([100, 150, 20, 60], step=timedelta(days=2)))
    got = con.execute(
        "SELECT seq, delta FROM sample_deltas_between($a, $b, lookback := INTERVAL 1 HOUR) "
        "ORDER BY seq",
        {"a": T0 + timedelta(days=3), "b": T0 + timedelta(days=10)},
    ).fetchall()
    assert got == [(3, 20.0), (4, 40.0)]


def test_window_macro_takes_the_later_of_two_samples_at_one_time_before_the_range(
    db: Database,
) -> None:
    con = db.cursor()
    rows = counter_rows([10, 20, 25])
    rows[1] = (*rows[1][:2], rows[0][2], *rows[1][3:])  # seq 2 at the time of seq 1
    insert(con, rows)
    got = con.execute(
        "SELECT seq, delta FROM sample_deltas_between($a, $b, lookback := INTERVAL 1 HOUR)",
        {"a": T0 + timedelta(seconds=30), "b": T0 + timedelta(days=1)},
    ).fetchall()
    assert got == [(3, 5.0)]  # after seq 2 (20), not seq 1 (10)


SERIES = st.tuples(
    st.sampled_from(["local", "acme"]),
    st.sampled_from([None, "claude-code", "cursor"]),
    st.sampled_from([None, "s-1"]),
    st.sampled_from(["embeddings", "compression"]),
    st.sampled_from(["m.total", "m.rate"]),
    st.sampled_from(["counter", "counter", "gauge", "delta"]),
)
POINT = st.tuples(
    st.integers(0, 5),  # which series
    # Seconds since the last point; a negative step is a backdated push.
    st.sampled_from([0, 0, 1, 30, 600, 7200, 200_000, -30, -5000]),
    st.one_of(st.integers(0, 5000), st.just(0)),  # values: drops are resets
)


def point_rows(series: list[tuple], points: list[tuple]) -> list[tuple]:
    """Sample rows (seq, batch, ts, series..., kind, value) from generated points."""
    rows, ts = [], T0
    for seq, (which, gap, value) in enumerate(points, start=1):
        ts += timedelta(seconds=gap)
        tenant, tool, session, source, metric, kind = series[which % len(series)]
        rows.append((seq, seq, ts, tenant, tool, session, source, metric, kind, float(value)))
    return rows


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    series=st.lists(SERIES, min_size=1, max_size=6, unique_by=lambda s: s[:5]),
    points=st.lists(POINT, min_size=1, max_size=80),
    window=st.tuples(st.integers(0, 400_000), st.integers(1, 400_000)),
    lookback_s=st.sampled_from([60, 3600, 86_400]),
)
def test_window_macro_agrees_exactly_with_the_view(
    series: list[tuple], points: list[tuple], window: tuple[int, int], lookback_s: int
) -> None:
    rows = point_rows(series, points)
    start = T0 + timedelta(seconds=window[0])
    end = start + timedelta(seconds=window[1])
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp) / "p.duckdb")
        try:
            con = db.cursor()
            insert(con, rows)
            params = {"a": start, "b": end}
            view = con.execute(
                "SELECT * FROM sample_deltas WHERE ts >= $a AND ts < $b ORDER BY seq", params
            ).fetchall()
            macro = con.execute(
                "SELECT * FROM sample_deltas_between($a, $b, lookback := $lb) ORDER BY seq",
                {**params, "lb": timedelta(seconds=lookback_s)},
            ).fetchall()
            assert macro == view
        finally:
            db.close()


@settings(max_examples=150, deadline=None)
@given(
    points=st.lists(
        st.tuples(st.integers(0, 4), st.sampled_from(["counter", "gauge", "delta", "untyped"]),
                  st.integers(0, 50), st.sampled_from([0, 0, 1, 7, -3])),
        min_size=1, max_size=60),
    shuffle=st.randoms(use_true_random=False),
)  # fmt: skip
def test_python_deltas_in_any_row_order_follow_the_rule(
    points: list[tuple[int, str, int, int]], shuffle: random.Random
) -> None:
    """`deltas_of` gives each row `sample_delta` against the row before it in its series
    by (ts, seq), whether its rows come in time order (sorted by series alone) or not."""
    ts, rows = 0, []
    for seq, (series, kind, value, step) in enumerate(points, start=1):
        ts += step
        rows.append((seq, ts, series, kind, float(value)))
    want: dict[int, float | None] = {}
    last: dict[int, float] = {}
    for seq, _, series, kind, value in sorted(rows, key=lambda r: (r[2], r[1], r[0])):
        want[seq] = sample_delta(kind, value, last.get(series))
        last[series] = value
    for order in (rows, shuffle.sample(rows, len(rows))):
        seqs, times, ids, kinds, values = zip(*order, strict=True)
        table = pa.table({
            "seq": pa.array(seqs, pa.int64()), "series_id": pa.array(ids, pa.int64()),
            "ts": pa.array([T0 + timedelta(seconds=t) for t in times], pa.timestamp("us", "UTC")),
            "kind": pa.array(kinds, pa.string()), "value": pa.array(values, pa.float64()),
        })  # fmt: skip
        delta, has = deltas_of(table)
        got = {s: float(d) if h else None for s, d, h in zip(seqs, delta, has, strict=True)}
        assert got == want
