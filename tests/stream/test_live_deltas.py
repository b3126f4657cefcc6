"""The live tail's deltas equal the view's, whatever order rows arrive in."""

import random
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingest.writer import Writer
from schemas.db import Database
from schemas.deltas import sample_delta
from schemas.labels import NO_LABELS, to_json
from schemas.rows import SampleRow, ScrapeRow
from schemas.signals import AppendSignal
from stream.batches import LOOKBACK, KnownSeries, Row, labels_of, read_batches
from stream.live import SeriesCache, read_live
from tests.helpers import Traced
from tests.schemas.test_deltas import insert

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SERIES = [
    ("local", None, None, "compression", "total"),
    ("local", "a", None, "compression", "total"),
    ("local", "a", "s1", "push", "tokens"),
    ("acme", None, None, "compression", "total"),
]
_JOINED = """
SELECT d.seq, d.batch, d.ts, d.series_id, k.tenant_id, k.tool_id, k.session_id, k.source,
       k.name, k.labels, d.kind, d.value, d.delta
FROM point_deltas_between($lo, $hi, lookback := $lookback) d
JOIN series_keys k ON k.id = d.series_id
WHERE d.seq > $after AND d.seq <= $upto
ORDER BY d.seq
"""
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
    """`read_batches` reads columns and each series' strings once; the rows are exactly
    those of a row-by-row `fetchall` of the same join, twice (the series then known)."""
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
    lo, hi = cur.execute("SELECT min(ts), max(ts) FROM points").fetchall()[0]
    params = {"lo": lo, "hi": hi + timedelta(microseconds=1), "lookback": LOOKBACK,
              "after": 0, "upto": last}  # fmt: skip
    want = [Row(*r[:9], labels_of(r[9]), *r[10:])
            for r in cur.execute(_JOINED, params).fetchall()]  # fmt: skip
    known = KnownSeries()
    for _ in range(2):
        got = [row for batch in read_batches(cur, 0, last, known) for row in batch.rows]
        assert got == want
        assert [r.ts.utcoffset() for r in got] == [timedelta(0)] * len(got)
    assert {r.labels for r in got} == {(), (("le", "0.5"),), (("code", "200"), ("path", "/a"))}
    db.close()


@pytest.mark.anyio
async def test_catch_up_batches_carry_their_failed_scrapes(tmp_path: Path) -> None:
    """A range's batches come with their failed scrapes, each with its own; a scrape that
    went well is none."""
    db = Database(tmp_path / "failures.duckdb")
    writer = Writer(db, AppendSignal())
    await writer.start()
    for b in range(4):
        ts = T0 + timedelta(seconds=b)
        up = b % 2 == 0
        await writer.append(
            [SampleRow(ts, "local", None, None, "a", "total", "counter", float(b))],
            [ScrapeRow(ts, "local", None, "a", True, 0.01, None),
             ScrapeRow(ts, "local", None, "b", up, 0.5, None if up else f"down {b}")],
        )  # fmt: skip
    await writer.close()
    cur = db.cursor()
    read = read_batches(cur, 0, 4, KnownSeries())
    assert [[(f.source, f.error) for f in b.failures] for b in read] == [
        [],
        [("b", "down 1")],
        [],
        [("b", "down 3")],
    ]
    assert [f.batch for f in read[1].failures] == [read[1].batch]
    assert [b.failures for b in read_batches(cur, 2, 3, KnownSeries())] == [[]]
    db.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(ROW, min_size=1, max_size=5), min_size=1, max_size=20),
    gaps=st.lists(st.sampled_from([0, 0, 0, 1, 3, 40, 900, 2 * 86400]), min_size=20,
                  max_size=20),
    cuts=st.lists(st.integers(0, 20), min_size=2, max_size=6),
    shuffle=st.randoms(use_true_random=False),
)  # fmt: skip
@example(  # a later batch backdated between the range's rows of its series
    batches=[[(0, "counter", 1, 0), (0, "counter", 5, 10)], [(0, "counter", 3, -5)]],
    gaps=[0] * 20,
    cuts=[0, 1],
    shuffle=random.Random(0),
)
@example(  # an earlier batch dated between them
    batches=[[(0, "counter", 3, 5)], [(0, "counter", 1, -5), (0, "counter", 5, 10)]],
    gaps=[0] * 20,
    cuts=[1, 2],
    shuffle=random.Random(0),
)
@example(  # the rows just before the range are newer than one series' sample before it
    batches=[[(0, "counter", 1, 0)], [(1, "counter", 1, 1)], [(0, "counter", 5, 0)]],
    gaps=[0] * 20,
    cuts=[2, 3],
    shuffle=random.Random(0),
)
@example(  # a row stored before those read with the range is its series' latest before it
    batches=[[(0, "counter", 3, 5)], [(0, "counter", 1, -1)], [(0, "counter", 5, 2)]],
    gaps=[0] * 20,
    cuts=[2, 3],
    shuffle=random.Random(0),
)
def test_catch_up_deltas_equal_the_view_for_any_range(
    batches: list[list[tuple[int, str, int, int]]],
    gaps: list[int],
    cuts: list[int],
    shuffle: random.Random,
) -> None:
    """However far back each series' sample before a range lies (seconds, minutes, days:
    the widening windows), with backdated rows among and around it (the macro), and
    stored in any order (a page is read in stored order, and put in seq order when that
    is not it)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp) / "ranges.duckdb")
        try:
            cur = db.cursor()
            seq, ts, out, ends = 0, T0, [], [0]
            for b, rows in enumerate(batches, start=1):
                ts += timedelta(seconds=gaps[b - 1])
                for which, kind, value, step in rows:
                    seq += 1
                    ts += timedelta(seconds=step)
                    out.append((seq, b, ts, *SERIES[which], kind, float(value)))
                ends.append(seq)
            shuffle.shuffle(out)
            insert(cur, out)
            view = dict(cur.execute("SELECT seq, delta FROM sample_deltas").fetchall())
            marks = sorted({ends[min(c, len(ends) - 1)] for c in cuts})
            for after, upto in zip(marks, marks[1:], strict=False):
                read = read_batches(cur, after, upto)
                got = [(r.seq, r.delta) for b in read for r in b.rows]
                assert got == [(s, view[s]) for s in range(after + 1, upto + 1)], (after, upto)
                assert [b.batch for b in read] == sorted({r.batch for b in read for r in b.rows})
        finally:
            db.close()


@pytest.mark.anyio
async def test_known_series_reads_each_series_once_and_stays_bounded(tmp_path: Path) -> None:
    """Ids are checked against a bitmap by id: a known one is not read again, an unknown
    one (below or above every known id) is; past the limit a new map starts with the
    series of that read, and those are known in it."""
    db = Database(tmp_path / "known.duckdb")
    writer = Writer(db, AppendSignal())
    await writer.start()
    await writer.append([SampleRow(T0, "local", None, None, "src", f"m{i}", "gauge", 1.0)
                         for i in range(10)])  # fmt: skip
    await writer.close()
    cur = db.cursor()
    ids = sorted(i for (i,) in cur.execute("SELECT id FROM series_keys").fetchall())
    known = KnownSeries(limit=6)
    reads: list[str] = []
    cursor: Any = Traced(cur, reads)
    first = known.resolve(cursor, np.array(ids[3:6]))
    assert sorted(first) == ids[3:6] and len(reads) == 1
    assert known.resolve(cursor, np.array(ids[4:6])) is first and len(reads) == 1
    assert known.resolve(cursor, np.array(ids[:2])) is first and len(reads) == 2  # below
    assert sorted(first) == ids[:2] + ids[3:6]
    later = known.resolve(cursor, np.array(ids[8:]))  # above, and past the limit
    assert later is not first and sorted(later) == ids[8:] and len(reads) == 3
    assert len(first) == 5  # a map handed out is never changed after
    assert known.resolve(cursor, np.array(ids[8:])) is later and len(reads) == 3
    assert known.resolve(cursor, np.array(ids[5:8])) is later and len(reads) == 4
    assert sorted(later) == ids[5:]
    assert {s.metric for s in later.values()} == {f"m{i}" for i in range(5, 10)}
    # The strings series share are one object each, across reads (copies held MiBs).
    assert len({id(s.source) for s in later.values()}) == 1
    assert len({id(s.tenant_id) for s in later.values()}) == 1
    db.close()
