from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from ingest.writer import Writer
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
