"""The Parquet mirror: one listed file per hour however often it exports, each row exactly
once, files that never change once written, also for a reader querying while exports
supersede the files it reads."""

import gc
import json
import os
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.writer import Writer
from query import connect
from query.mirror import GRACE_SECONDS, export_new, listed_files, mirror_dir
from schemas.db import Database
from schemas.rows import SampleRow
from schemas.signals import AppendSignal

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


def rows(start: datetime, n: int) -> list[SampleRow]:
    return [SampleRow(start + timedelta(seconds=i), "local", None, None, "src", "m", "counter", i)
            for i in range(n)]  # fmt: skip


@pytest.fixture
async def writer(db: Database) -> AsyncIterator[Writer]:
    w = Writer(db, AppendSignal())
    await w.start()
    yield w
    await w.close()


def export(db: Database, grace: float = GRACE_SECONDS) -> int:
    return db.read_sync(lambda cur: export_new(cur, mirror_dir(db.path), db.epoch, grace))


def counts(db: Database) -> tuple[int, int]:
    con = connect(db.path)
    try:
        total, distinct = con.sql("SELECT count(*), count(DISTINCT seq) FROM samples").fetchall()[0]
        return total, distinct
    finally:
        con.close()


def hours(db: Database) -> list[str]:
    """The hours of the files meta.json lists, as `day=…/HH`."""
    return [f"{p.parent.name}/{p.name.split('-')[0]}" for p in listed_files(mirror_dir(db.path))]


def on_disk(db: Database) -> list[Path]:
    return sorted((mirror_dir(db.path) / "points").glob("*/*"))


async def test_many_exports_list_one_file_per_hour(db: Database, writer: Writer) -> None:
    # 40 exports, each adding 100 samples that span 9:30 to 11:10.
    for i in range(40):
        await writer.append(rows(T0 + timedelta(seconds=150 * i), 100))
        export(db)
    assert hours(db) == ["day=2026-11-20/09", "day=2026-11-20/10", "day=2026-11-20/11"]
    assert counts(db) == (4000, 4000)
    # Late rows for an hour already exported join its file.
    await writer.append(rows(T0 - timedelta(days=1), 5))
    export(db)
    assert "day=2026-11-19/09" in hours(db) and len(hours(db)) == 4
    assert counts(db) == (4005, 4005)
    # Superseded files stay for the grace period, then go; listed ones stay.
    assert len(on_disk(db)) > 4
    await writer.append(rows(T0, 1))
    export(db, grace=0)
    assert on_disk(db) == sorted(listed_files(mirror_dir(db.path)))


async def test_a_file_never_changes_once_written(db: Database, writer: Writer) -> None:
    # DuckDB opens a file by its path several times in one query: a file replaced in
    # between would mix two versions. So a path, once written, keeps its bytes.
    seen: dict[Path, bytes] = {}
    for i in range(20):
        await writer.append(rows(T0 + timedelta(seconds=10 * i), 10))
        export(db)
        for path in on_disk(db):
            content = path.read_bytes()
            assert seen.setdefault(path, content) == content, path
    assert len(seen) == 20 and len(listed_files(mirror_dir(db.path))) == 1


async def test_an_export_that_died_leaves_files_that_are_deleted_later(
    db: Database, writer: Writer
) -> None:
    await writer.append(rows(T0, 10))
    export(db)
    stray = mirror_dir(db.path) / "points" / "day=2026-11-20" / ".09-x.parquet.1.abc.tmp"
    stray.write_bytes(b"half a file")
    await writer.append(rows(T0, 10))
    export(db)
    assert stray.exists()  # it might be another export's, still being written
    os.utime(stray, (0, 0))
    export(db)
    assert not stray.exists() and counts(db) == (20, 20)


async def test_an_export_stopped_before_recording_progress_counts_nothing_twice(
    db: Database, writer: Writer
) -> None:
    await writer.append(rows(T0, 10))
    export(db)
    meta_path = mirror_dir(db.path) / "meta.json"
    before = meta_path.read_text()
    await writer.append(rows(T0 + timedelta(seconds=10), 10))
    export(db)
    meta_path.write_text(before)  # as if it died after the files, before meta.json
    await writer.append(rows(T0 + timedelta(seconds=20), 10))
    assert export(db) == 30
    assert counts(db) == (30, 30)


async def test_a_mirror_of_the_old_layout_is_rebuilt(db: Database, writer: Writer) -> None:
    await writer.append(rows(T0, 5))
    mirror = mirror_dir(db.path)
    old = mirror / "samples" / "day=2026-11-20" / f"{1:020d}-{5:020d}.parquet"
    old.parent.mkdir(parents=True)
    pq.write_table(pa.table({"seq": [1]}), old)
    (mirror / "meta.json").write_text(json.dumps({"epoch": db.epoch, "seq": 5}))
    assert export(db) == 5
    assert not old.exists() and hours(db) == ["day=2026-11-20/09"]
    assert counts(db) == (5, 5)


async def test_readers_never_see_rows_missing_or_twice_while_exports_supersede_files(
    db: Database, writer: Writer
) -> None:
    await writer.append(rows(T0, 50))
    export(db)
    held: list[tuple[int, int]] = []  # one connection kept open: it follows the exports
    fresh: list[tuple[int, int]] = []  # a new connection (a new DuckDB) for each query
    errors: list[BaseException] = []
    stop = threading.Event()
    query = "SELECT count(*), count(DISTINCT seq) FROM samples"

    def read() -> None:
        con = connect(db.path)
        try:
            while not stop.is_set():
                held.append(con.sql(query).fetchall()[0])
                new = connect(db.path)
                try:
                    fresh.append(new.sql(query).fetchall()[0])
                finally:
                    new.close()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            con.close()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 400):  # every export supersedes the 9:00 file the readers read
            await writer.append(rows(T0 + timedelta(seconds=i), 50))
            export(db)
    finally:
        stop.set()
        reader.join(timeout=30)
    assert not errors, errors
    assert len(fresh) > 10 and len(held) > 10
    for seen in (held, fresh):
        assert all(total == distinct for total, distinct in seen)  # never twice
        assert [t for t, _ in seen] == sorted(t for t, _ in seen)  # never fewer than before
    assert len({t for t, _ in held}) > 1  # the open connection saw later exports
    assert counts(db) == (20000, 20000)


def started_follower(before: set[threading.Thread]) -> threading.Thread:
    (thread,) = [t for t in threading.enumerate() if t not in before
                 and t.name == "omnimetrics-mirror-follower"]  # fmt: skip
    return thread


async def test_a_connection_closed_or_dropped_stops_following(db: Database, writer: Writer) -> None:
    await writer.append(rows(T0, 5))
    export(db)
    before = set(threading.enumerate())
    con = connect(db.path)
    follower = started_follower(before)
    con.close()
    await writer.append(rows(T0, 5))
    export(db)  # the next look at the list finds the connection closed
    follower.join(timeout=5)
    assert not follower.is_alive()
    before = set(threading.enumerate())
    dropped = connect(db.path)
    follower = started_follower(before)
    del dropped
    gc.collect()
    follower.join(timeout=5)
    assert not follower.is_alive()
