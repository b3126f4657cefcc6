"""The live tail's deltas equal the view's, whatever order rows arrive in."""

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import stream.batches as batches_module
from ingest.writer import Writer
from schemas.db import Database
from schemas.deltas import sample_delta
from schemas.labels import NO_LABELS, to_json
from schemas.rows import SampleRow
from schemas.signals import AppendSignal
from stream.batches import LOOKBACK, Row, labels_of, read_batches
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


@pytest.mark.anyio
async def test_catch_up_rows_read_as_arrow_are_the_rows_fetchall_gives(tmp_path: Path) -> None:
    """`read_batches` converts per column (times once per time, labels once per series);
    the rows are exactly those of a row-by-row `fetchall`, twice (the labels then cached)."""
    db = Database(tmp_path / "arrow.duckdb")
    writer = Writer(db, AppendSignal())
    await writer.start()
    labels = [NO_LABELS, to_json((("le", "0.5"),)), to_json((("code", "200"), ("path", "/a")))]
    for b in range(6):
        await writer.append([
            SampleRow(T0 + timedelta(seconds=b * 7 + (i % 2)), "acme" if i % 4 else "local",
                      "t" if i % 3 else None, "s" if i % 5 == 0 else None, f"src{i % 2}",
                      f"m{i % 3}", ("counter", "gauge", "delta", "untyped")[i % 4],
                      float((b * 3 + i) % 7), labels[i % 3])
            for i in range(12)
        ])  # fmt: skip
    last = writer.last_seq
    await writer.close()
    cur = db.cursor()
    lo, hi = cur.execute(batches_module._BOUNDS, {"after": 0, "upto": last}).fetchall()[0]
    params = {"lo": lo, "hi": hi + timedelta(microseconds=1), "lookback": LOOKBACK,
              "after": 0, "upto": last}  # fmt: skip
    want = [Row(*r[:9], labels_of(r[9]), *r[10:])
            for r in cur.execute(batches_module._ROWS, params).fetchall()]  # fmt: skip
    labels: dict[int, tuple[tuple[str, str], ...]] = {}
    for _ in range(2):
        got = [row for batch in read_batches(cur, 0, last, labels) for row in batch.rows]
        assert got == want
        assert [r.ts.utcoffset() for r in got] == [timedelta(0)] * len(got)
    assert {r.labels for r in got} == {(), (("le", "0.5"),), (("code", "200"), ("path", "/a"))}
    db.close()
