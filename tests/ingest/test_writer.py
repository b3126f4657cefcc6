from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from ingest.writer import TooManySeries, Writer
from schemas.db import Database
from schemas.rows import SampleRow
from schemas.signals import Appended, AppendSignal

pytestmark = pytest.mark.anyio


def rows(n: int, value: float = 1.0) -> list[SampleRow]:
    ts = datetime.now(UTC)
    return [SampleRow(ts, "local", None, None, "src", f"m{i}", "counter", value) for i in range(n)]


async def test_seq_strictly_increases_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    seen: list[int] = []
    for _ in range(3):
        db = Database(path)
        writer = Writer(db, AppendSignal())
        await writer.start()
        for n in (3, 1, 5):
            commit = await writer.append(rows(n))
            assert commit is not None
            seen.extend(range(commit.first_seq, commit.last_seq + 1))
        await writer.close()
        db.close()
    assert seen == list(range(1, len(seen) + 1))
    db = Database(path)
    stored = db.read_sync(lambda c: c.execute("SELECT seq FROM samples ORDER BY seq").fetchall())
    assert [s for (s,) in stored] == seen
    batches = db.read_sync(
        lambda c: c.execute("SELECT count(DISTINCT batch) FROM samples").fetchall()
    )
    assert batches == [(9,)]
    db.close()


async def test_commit_is_announced_after_it_is_readable(db: Database) -> None:
    signal = AppendSignal()
    heard: list[tuple[Appended, int]] = []
    two_heard = anyio.Event()

    def listener(appended: Appended) -> None:
        # Whatever is announced must already be visible to a fresh reader.
        count = db.read_sync(
            lambda c: c.execute(
                "SELECT count(*) FROM samples WHERE seq <= $s", {"s": appended.last_seq}
            ).fetchall()
        )[0][0]
        heard.append((appended, count))
        if len(heard) == 2:
            two_heard.set()

    signal.subscribe(listener)
    writer = Writer(db, signal)
    await writer.start()
    await writer.append(rows(4))
    await writer.append(rows(2))
    # The notice is posted to the loop; let it run.
    with anyio.fail_after(5):
        await two_heard.wait()
    await writer.close()
    assert [(a.first_seq, a.last_seq, n) for a, n in heard] == [(1, 4, 4), (5, 6, 6)]
    assert heard[0][0].tenant_ids == frozenset({"local"})


async def test_empty_append_writes_nothing(db: Database) -> None:
    writer = Writer(db, AppendSignal())
    await writer.start()
    assert await writer.append([]) is None
    assert writer.last_seq == 0
    await writer.close()


async def test_each_series_is_stored_once_however_many_samples_it_has(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    labels = ['{"code":"200"}', '{"code":"500"}', "{}"]
    for _ in range(2):  # across a restart: the writer reloads what it knows
        db = Database(path)
        writer = Writer(db, AppendSignal())
        await writer.start()
        for tick in range(50):
            batch = [
                SampleRow(
                    datetime.now(UTC),
                    "local",
                    tool,
                    None,
                    "src",
                    "m",
                    "counter",
                    float(tick),
                    label,
                )  # fmt: skip
                for tool in (None, "a")
                for label in labels
            ] * 2  # the same series twice in one batch, too
            await writer.append(batch)
        await writer.close()
        db.close()
    db = Database(path)
    try:
        keys, points = db.read_sync(lambda c: c.execute(
            "SELECT (SELECT count(*) FROM series_keys), (SELECT count(*) FROM points)"
        ).fetchall()[0])  # fmt: skip
        assert (keys, points) == (6, 2 * 50 * 12)
        names = db.read_sync(lambda c: c.execute(
            "SELECT tool_id, name, samples FROM series ORDER BY ALL").fetchall())  # fmt: skip
        assert names == [
            ("a", "m", 200), ("a", 'm{code="200"}', 200), ("a", 'm{code="500"}', 200),
            (None, "m", 200), (None, 'm{code="200"}', 200), (None, 'm{code="500"}', 200),
        ]  # fmt: skip
    finally:
        db.close()


async def test_a_failed_write_leaves_no_series_behind(tmp_path: Path) -> None:
    db = Database(tmp_path / "f.duckdb")
    writer = Writer(db, AppendSignal(), max_series_per_tenant=2)
    await writer.start()
    try:
        await writer.append_events([(None, rows(1))])
        with pytest.raises(TooManySeries):
            await writer.append_events([(None, rows(3))])
        assert len(writer.series) == 1
        commit = await writer.append(rows(3))  # a scrape: what fits is stored, the rest counted
        assert commit is not None and commit.rows == 2 and commit.skipped == 1
        assert writer.series_skipped == 1 and len(writer.series) == 2
    finally:
        await writer.close()
        db.close()
