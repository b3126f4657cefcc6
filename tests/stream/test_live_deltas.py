"""The live tail's deltas equal the view's, whatever order rows arrive in."""

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas.db import Database
from schemas.deltas import sample_delta
from stream.live import SeriesCache, read_live
from tests.schemas.test_deltas import insert

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SERIES = [
    ("local", None, None, "compression", "total"),
    ("local", "a", None, "compression", "total"),
    ("local", "a", "s1", "push", "tokens"),
    ("acme", None, None, "compression", "total"),
]
ROW = st.tuples(
    st.integers(0, len(SERIES) - 1),
    st.sampled_from(["counter", "counter", "gauge", "delta"]),
    st.integers(0, 100),
    st.integers(-120, 600),  # seconds from the previous row: negative is backdated
)


def test_python_rule_matches_the_sql_macro(db: Database) -> None:
    cases = [(k, v, p) for k in ("counter", "gauge", "delta") for v in (0.0, 5.0, 12.5)
             for p in (None, 0.0, 5.0, 20.0)]  # fmt: skip
    cur = db.cursor()
    for kind, value, prev in cases:
        (sql,) = cur.execute(
            "SELECT sample_delta($k, $v, $p)", {"k": kind, "v": value, "p": prev}
        ).fetchall()[0]
        assert sql == sample_delta(kind, value, prev), (kind, value, prev)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(ROW, min_size=1, max_size=5), min_size=1, max_size=25),
    reads=st.lists(st.booleans(), min_size=25, max_size=25),
    forget=st.lists(st.booleans(), min_size=25, max_size=25),
    cache_size=st.sampled_from([1, 2, 1000]),
)
@example(  # found in CI: a backdated row, then a restart that forgot the cache
    batches=[[(1, "counter", 0, 0)], [(1, "counter", 1, -1), (0, "counter", 0, 1)],
             [(1, "counter", 1, 0)]],
    reads=[True, True] + [False] * 23,
    forget=[False, True] + [False] * 23,
    cache_size=2,
)  # fmt: skip
def test_live_deltas_equal_the_view_as_of_each_read(
    batches: list[list[tuple[int, str, int, int]]],
    reads: list[bool],
    forget: list[bool],
    cache_size: int,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp) / "live.duckdb")
        try:
            cur = db.cursor()
            cache = SeriesCache(cache_size)
            seq, position, ts = 0, 0, T0
            for b, rows in enumerate(batches, start=1):
                out = []
                for which, kind, value, step in rows:
                    seq += 1
                    ts += timedelta(seconds=step)
                    out.append(
                        (seq, b, ts, *SERIES[which][:3], *SERIES[which][3:], kind, float(value))
                    )
                insert(cur, out)
                if not reads[b - 1] and b != len(batches):
                    continue
                if forget[b - 1]:
                    cache = SeriesCache(cache_size)  # a restarted process
                live = {
                    row.seq: row.delta
                    for batch in read_live(cur, cache, position, seq)
                    for row in batch.rows
                }
                view = dict(
                    cur.execute(
                        "SELECT seq, delta FROM sample_deltas WHERE seq > $a", {"a": position}
                    ).fetchall()
                )
                assert live == view
                position = seq
        finally:
            db.close()
