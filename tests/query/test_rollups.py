"""Rollups plus raw tails give exactly the view's increases, whatever arrives late."""

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from query.history import increase_table
from schemas import rollups
from schemas.db import Database
from schemas.models import SampleFilters
from tests.schemas.test_deltas import insert

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SERIES = [
    ("local", "a", None, "c", "m"),
    ("local", "b", None, "c", "m"),
    ("acme", None, "s", "p", "m"),
]
ROW = st.tuples(
    st.integers(0, len(SERIES) - 1),
    st.sampled_from(["counter", "counter", "delta", "gauge"]),
    st.integers(0, 100),
    st.integers(-7200, 5400),  # seconds from the previous row: negative arrives late
)


def view_increase(cur, start: datetime, end: datetime, step: int, tool: str | None) -> dict:  # type: ignore[no-untyped-def]
    rows = cur.execute(
        "SELECT ts, tool_id, delta FROM sample_deltas WHERE ts >= $a AND ts < $b "
        "AND delta IS NOT NULL AND metric = 'm'",
        {"a": start, "b": end},
    ).fetchall()
    out: dict[int, float] = {}
    for ts, row_tool, delta in rows:
        if tool is None or row_tool == tool:
            bucket = int(ts.timestamp()) // step
            out[bucket] = out.get(bucket, 0.0) + delta
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(ROW, min_size=1, max_size=4), min_size=1, max_size=20),
    refresh_after=st.lists(st.sampled_from([True, False, False]), min_size=20, max_size=20),
    now_after=st.integers(-90, 180),  # minutes from the newest sample to "now" at a refresh
    window=st.tuples(st.integers(-2, 8), st.integers(1, 30), st.integers(0, 3599)),
    step=st.sampled_from([3600, 3600, 7200, 86400, 1800]),
    tool=st.sampled_from([None, "a"]),
)
def test_rollups_and_tails_agree_with_the_view(
    batches: list[list[tuple[int, str, int, int]]],
    refresh_after: list[bool],
    now_after: int,
    window: tuple[int, int, int],
    step: int,
    tool: str | None,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp) / "r.duckdb")
        try:
            cur = db.cursor()
            seq, ts = 0, T0
            for b, rows in enumerate(batches, start=1):
                out = []
                for which, kind, value, gap in rows:
                    seq += 1
                    ts += timedelta(seconds=gap)
                    out.append((seq, b, ts, *SERIES[which], kind, float(value)))
                insert(cur, out)
                if refresh_after[b - 1] or b == len(batches) // 2 + 1:
                    rollups.refresh(cur, ts + timedelta(minutes=now_after))
            start = T0 + timedelta(hours=window[0], seconds=window[2])
            end = start + timedelta(hours=window[1])
            filters = SampleFilters(metric="m", tool_id=tool)
            usable = rollups.valid_until(cur) - start.timestamp() >= 3600
            event(f"rollup in range: {step % 3600 == 0 and usable}")
            table = increase_table(cur, filters, [], start, end, step)
            got = {int(r["t"].timestamp()) // step: r["value"] for r in table.to_pylist()}
            expected = view_increase(cur, start, end, step, tool)
            for bucket, value in got.items():
                assert abs(value - expected.get(bucket, 0.0)) < 1e-9, (bucket, got, expected)
            assert set(expected) <= set(got)
        finally:
            db.close()


def test_late_row_after_a_refresh_is_counted_exactly(db: Database) -> None:
    cur = db.cursor()
    rows = [(i + 1, i + 1, T0 + timedelta(minutes=30 * i), "local", "a", None, "c", "m",
             "counter", float(10 * (i + 1))) for i in range(12)]  # fmt: skip
    insert(cur, rows)
    until = rollups.refresh(cur, T0 + timedelta(hours=8))
    # Up to the last minute closed by now (08:00) less the 2-minute grace; data ends 05:30.
    assert until == int((T0 + timedelta(hours=7, minutes=58)).timestamp())
    assert rollups.valid_until(cur) == until
    hourly = cur.execute("SELECT count(*), sum(increase) FROM rollup_hourly").fetchall()
    assert hourly == [(6, 110.0)]  # 11 deltas of 10
    # A backdated sample lands at 02:15: the rollup is stale from 02:00 until refreshed.
    insert(cur, [(13, 13, T0 + timedelta(hours=2, minutes=15), "local", "a", None, "c", "m",
                  "counter", 2.0)])  # fmt: skip
    assert rollups.valid_until(cur) == int((T0 + timedelta(hours=2)).timestamp())
    filters = SampleFilters(metric="m")
    start, end = T0, T0 + timedelta(hours=6)
    for when in ("stale", "refreshed"):
        table = increase_table(cur, filters, [], start, end, 3600)
        got = {int(r["t"].timestamp()) // 3600: r["value"] for r in table.to_pylist()}
        expected = view_increase(cur, start, end, 3600, None)
        assert got == {b: expected.get(b, 0.0) for b in got}, when
        rollups.refresh(cur, T0 + timedelta(hours=8))
    assert rollups.valid_until(cur) == until


def test_a_day_by_hour_reads_the_rollup(db: Database) -> None:
    cur = db.cursor()
    rows = [(i + 1, i + 1, T0 + timedelta(minutes=10 * i), "local", "a", None, "c", "m",
             "counter", float(i % 50)) for i in range(6 * 48)]  # fmt: skip
    insert(cur, rows)
    rollups.refresh(cur, T0 + timedelta(days=3))
    # Remove raw rows from a rolled-up hour behind the view's back: if the answer still
    # has them, it came from the rollup (a test-only check; nothing in omnimetrics deletes).
    cur.execute("DELETE FROM points WHERE ts >= $a AND ts < $b",
                {"a": T0 + timedelta(hours=5), "b": T0 + timedelta(hours=6)})  # fmt: skip
    table = increase_table(cur, SampleFilters(metric="m"), [], T0, T0 + timedelta(days=1), 3600)
    by_hour = {r["t"]: r["value"] for r in table.to_pylist()}
    # Hour 5 held values 30..35, six deltas of 1; the raw rows are gone, the rollup is not.
    assert by_hour[T0 + timedelta(hours=5)] == 6.0
