"""The Parquet mirror: one file per hour however often it exports, each row exactly once,
also for a reader querying while exports rewrite the files it reads."""

import json
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.writer import Writer
from query import connect
from query.mirror import export_new, mirror_dir
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


def export(db: Database) -> int:
    return db.read_sync(lambda cur: export_new(cur, mirror_dir(db.path), db.epoch))


def counts(db: Database) -> tuple[int, int]:
    con = connect(db.path)
    try:
        total, distinct = con.sql("SELECT count(*), count(DISTINCT seq) FROM samples").fetchall()[0]
        return total, distinct
    finally:
        con.close()


def files(db: Database) -> list[str]:
    folder = mirror_dir(db.path) / "samples"
    return sorted(str(p.relative_to(folder)) for p in folder.glob("*/*"))


async def test_many_exports_make_one_file_per_hour(db: Database, writer: Writer) -> None:
    # 40 exports, each adding 100 samples that span 9:30 to 11:10.
    for i in range(40):
        await writer.append(rows(T0 + timedelta(seconds=150 * i), 100))
        export(db)
    assert files(db) == ["day=2026-11-20/09.parquet", "day=2026-11-20/10.parquet",
                         "day=2026-11-20/11.parquet"]  # fmt: skip
    assert counts(db) == (4000, 4000)
    # Late rows for an hour already exported join its file.
    await writer.append(rows(T0 - timedelta(days=1), 5))
    export(db)
    assert "day=2026-11-19/09.parquet" in files(db) and len(files(db)) == 4
    assert counts(db) == (4005, 4005)


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
    assert files(db) == ["day=2026-11-20/09.parquet"]
    assert counts(db) == (5, 5)


async def test_a_reader_never_sees_rows_missing_or_twice_while_exports_rewrite(
    db: Database, writer: Writer
) -> None:
    await writer.append(rows(T0, 50))
    export(db)
    seen: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        con = connect(db.path)
        try:
            while not stop.is_set():
                seen.append(
                    con.sql("SELECT count(*), count(DISTINCT seq) FROM samples").fetchall()[0]
                )
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            con.close()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 60):  # every export rewrites the 9:00 file the reader reads
            await writer.append(rows(T0 + timedelta(seconds=i), 50))
            export(db)
    finally:
        stop.set()
        reader.join(timeout=30)
    assert not errors, errors
    assert len(seen) > 10
    assert all(total == distinct for total, distinct in seen)  # never twice
    assert [t for t, _ in seen] == sorted(t for t, _ in seen)  # never fewer than before
    assert seen[-1][0] <= 3000 and counts(db) == (3000, 3000)
