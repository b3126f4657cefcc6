"""Shared catch-up pages: however clients' cursors and starts fall (on a batch's end or
inside one, across pages and batches longer than a page), each gets exactly the messages
of one private read of its range, while the store is read far fewer times than pages
are served."""

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import anyio
import anyio.lowlevel
import duckdb
import numpy as np
import pytest

from ingest.writer import Writer
from schemas.db import Database
from schemas.rows import SampleRow
from schemas.signals import Appended, AppendSignal
from stream.batches import KnownSeries, batch_ends, known_series, read_batches
from stream.encode import Filter, Outgoing, encode_batch
from stream.hub import Client, Hub
from stream.pages import GridEnds, Page, SharedPages, Told, read_page
from stream.replay import ReplayGate
from stream.session import Session, catch_up
from stream.sources import StoreSource
from stream.tail import Tail
from tests.helpers import Traced

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 3, 1, tzinfo=UTC)
FILTERS = [Filter(), Filter("acme"), Filter(None, "t"), Filter("local", None, "s")]


async def _store(db: Database, rng: random.Random) -> list[int]:
    """Batches of 1-20 rows (the grid below is 7 seqs, so many span pages), counters that
    reset now and then; the last seq of each batch."""
    writer = Writer(db, AppendSignal())
    await writer.start()
    ends = []
    for b in range(40):
        await writer.append([
            SampleRow(T0 + timedelta(seconds=b), rng.choice(["acme", "local"]),
                      rng.choice(["t", None]), rng.choice(["s", None]), f"src{i % 3}",
                      f"m{i % 4}", rng.choice(["counter", "gauge"]), float(rng.randint(0, 9)))
            for i in range(rng.randint(1, 20))
        ])  # fmt: skip
        ends.append(writer.last_seq)
    await writer.close()
    return ends


async def _ten_batches(db: Database, kind: str) -> None:
    """Ten batches of three rows: seqs 1-30, batches ending at 3, 6, ... 30."""
    writer = Writer(db, AppendSignal())
    await writer.start()
    for b in range(10):
        await writer.append([SampleRow(T0 + timedelta(seconds=b), "local", None, None, "src",
                                       f"m{i}", kind, float(b)) for i in range(3)])  # fmt: skip
    await writer.close()


@pytest.mark.parametrize("seed", range(4))
async def test_clients_sharing_pages_get_what_a_read_of_their_own_gives(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    db = Database(tmp_path / "pages.duckdb")
    ends = await _store(db, rng)
    # The stream moves on while they catch up (pages read near its head are cut there),
    # and each client joins at a batch's end the stream has reached.
    hub = Hub(f"e{seed}", ends[10])  # an epoch names one database
    gate = ReplayGate(reads=2, clients=100, shared=SharedPages(keep=4, grid=7))
    clients: dict[int, tuple[int, int, Filter]] = {}

    async def move_on() -> None:
        for end in ends[11:]:
            await anyio.sleep(0.006)
            hub.position = end

    async def resume(i: int) -> list[Outgoing]:
        await anyio.sleep(rng.random() / 10)
        reached = [e for e in ends if e <= hub.position]
        start = reached[-1] if rng.random() < 0.7 else rng.choice(reached[1:])  # joined earlier
        # Most on a batch's end near the start (they travel together), some near the
        # stream's position, some inside a batch.
        after = rng.choice(
            [rng.choice(reached[:8])] * 3 + [rng.choice(reached[-4:-1])] + [rng.randrange(start)]
        )
        after = min(after, start - 1)
        flt = rng.choice(FILTERS)
        clients[i] = (after, start, flt)
        session = Session(Client(flt, start, 1 << 20), Outgoing("connected", "{}"), after)
        return [
            m
            async for page in catch_up(StoreSource(db, gate, hub.epoch), hub, session, gate)
            for m in page
        ]

    got: dict[int, list[Outgoing]] = {}

    async def client(i: int) -> None:
        got[i] = await resume(i)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(move_on)
            for i in range(40):
                tasks.start_soon(client, i)
    cur = db.cursor()
    for i, (after, start, flt) in clients.items():
        want = [m for b in read_batches(cur, after, start) for m in encode_batch(b, flt, hub.epoch)]
        assert got[i] == want, (after, start, flt)
    assert gate.shared.reads * 2 < gate.served
    assert gate.replaying == 0 and gate.reading == 0
    # Nothing kept beyond the pages it keeps (a page read again held on to the one before).
    assert set(gate.shared._ends) == set(gate.shared._pages.values())
    assert len(gate.shared._pages) <= 4
    db.close()


async def test_a_page_cut_at_the_streams_position_is_read_again_past_it(tmp_path: Path) -> None:
    """Ten batches of three rows (seqs 1-30) on a grid of 10: cell 1 holds the batches
    after seq 12 up to seq 21 once the stream is past it; a read failure is not kept."""
    db = Database(tmp_path / "cut.duckdb")
    await _ten_batches(db, "gauge")
    shared = SharedPages(grid=10)
    fail = [True]

    async def read(first: int, last: int, bound: int, told: Told) -> Page:
        if fail.pop() if fail else False:
            raise OSError("disk went away")
        return await db.read(partial(read_page, first=first, last=last, bound=bound,
                                     known=KnownSeries(), told=told, ends=shared.ends))  # fmt: skip

    with pytest.raises(OSError):
        await shared.page(12, 15, read)
    cut = await shared.page(12, 15, read)  # the stream is at 15: cut there
    assert cut is not None and (cut.start, cut.end, cut.ends) == (12, 15, [15])
    again = await shared.page(15, 30, read)  # a client that joined later: read past 15
    assert again is not None and (again.start, again.end, again.ends) == (12, 21, [15, 18, 21])
    assert await shared.page(18, 30, read) is again  # shared
    # The cut read is let go (keeping it beside the new one held every cut page for good).
    assert set(shared._ends) == set(shared._pages.values()) and len(shared._pages) == 1
    assert await shared.page(13, 30, read) is None  # inside a batch: served on its own
    assert shared.reads == 3
    encoded = await again.encoded(Filter(), "e")
    assert [m.seq for m in again.messages(encoded, 15, 18)] == [18]
    assert await again.encoded(Filter(), "e") is encoded  # once per filter
    # The same while the cut read is still going on: the later client waits for it, then
    # reads past it.
    later = SharedPages(grid=10)
    results: dict[str, Page | None] = {}

    async def ask(name: str, after: int, bound: int) -> None:
        results[name] = await later.page(after, bound, read)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ask, "first", 12, 15)
        await anyio.lowlevel.checkpoint()
        tasks.start_soon(ask, "later", 15, 30)
    first, after_it = results["first"], results["later"]
    assert first is not None and first.end == 15
    assert after_it is not None and (after_it.start, after_it.end) == (12, 21)
    assert later.reads == 2
    db.close()


async def test_pages_kept_are_bounded_in_bytes_as_their_messages_are_kept(
    tmp_path: Path,
) -> None:
    """Past `keep_bytes` (rows and the messages kept), the pages used longest ago are let
    go, as a new page is read or a page keeps a filter's messages; never the page used
    last, however big."""
    db = Database(tmp_path / "bytes.duckdb")
    await _ten_batches(db, "counter")
    shared = SharedPages(grid=10, keep_bytes=3_000)

    async def read(first: int, last: int, bound: int, told: Told) -> Page:
        return await db.read(partial(read_page, first=first, last=last, bound=bound,
                                     known=KnownSeries(), told=told))  # fmt: skip

    pages = [await shared.page(after, 30, read) for after in (0, 12, 21)]
    assert [(p.start, p.end) for p in pages if p is not None] == [(0, 12), (12, 21), (21, 30)]
    sizes = [p.size for p in pages if p is not None]
    assert sizes == [12 * 64 + 4 * 200, 9 * 64 + 3 * 200, 9 * 64 + 3 * 200]
    assert list(shared._pages) == [1, 2] and shared.kept_bytes == sizes[1] + sizes[2]
    last = pages[2]
    assert last is not None
    encoded = await last.encoded(Filter(), "e")
    texts = sum(len(m.text) + 120 for ms in encoded for m in ms)
    assert last.size == sizes[2] + texts
    assert list(shared._pages) == [2] and shared.kept_bytes == last.size  # over, but last
    assert set(shared._ends) == set(shared._pages.values())
    db.close()


async def test_grid_ends_keep_only_what_committed_batches_say(tmp_path: Path) -> None:
    """A grid point's batch end is kept once the stream is past it (its batch committed,
    so it never changes); one past the stream is looked up again, and found once its
    batch is stored; the oldest are let go beyond the limit."""
    db = Database(tmp_path / "ends.duckdb")
    await _ten_batches(db, "gauge")
    cur = db.cursor()
    ends = GridEnds(limit=3)
    assert ends.of(cur, 15, 12, 20) == [12, 21]  # 20 is in the batch 19-21
    assert list(ends._ends) == [12]  # 20 is past the stream (at 15): not kept
    assert ends.of(cur, 30, 20, 32) == [21, 32]  # nothing holds 32 yet
    assert list(ends._ends) == [12, 20]
    await _ten_batches(db, "gauge")  # seqs 31-60
    assert ends.of(cur, 60, 32, 40) == [33, 42]  # 32 in the batch 31-33
    assert list(ends._ends) == [20, 32, 40]  # at most 3: the oldest let go
    assert ends.of(cur, 60, 12) == [12]  # looked up again
    cur.close()
    db.close()


async def test_where_a_page_ends_is_known_before_its_rows_are_read(tmp_path: Path) -> None:
    """`end` answers as soon as the read has the page's bounds (its first statement),
    while the rows are still being read; it joins the same read `page` then shares; it
    will not tell for a page that must be read again, nor for a read that failed."""
    db = Database(tmp_path / "end.duckdb")
    await _ten_batches(db, "gauge")
    shared = SharedPages(grid=10)
    rows_may_go = asyncio.Event()
    fail = [False]

    async def read(first: int, last: int, bound: int, told: Told) -> Page:
        if fail[0]:
            raise OSError("disk went away")

        def bounds_then_wait(cur: duckdb.DuckDBPyConnection) -> Page:
            start, end = batch_ends(cur, first, last)
            told(min(end, bound))
            return Page(start, min(end, bound), [])

        page = await db.read(bounds_then_wait)
        await rows_may_go.wait()  # the rows "are still being read"
        return page

    with anyio.fail_after(10):
        reading = asyncio.ensure_future(shared.page(12, 30, read))
        assert await shared.end(12, 30, read) == 21
        assert not reading.done() and shared.reads == 1  # one read, shared
        rows_may_go.set()
        assert (await reading).end == 21  # type: ignore[union-attr]
        assert await shared.end(15, 30, read) == 21  # known from the page read
        assert await shared.end(21, 30, read) == 30  # the next cell: a read of its own
        assert shared.reads == 2
        cut = await shared.page(30, 33, read)  # the stream is at 33
        assert cut is not None and cut.end == 33
        assert await shared.end(33, 33, read) is None  # needs reading again past 33
        fail[0] = True
        assert await shared.end(45, 60, read) is None  # failed
    db.close()


async def test_a_client_inside_a_batch_reads_on_from_where_its_own_page_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cursor inside a batch is served from a read of its own, which here ends before
    the shared page of its cell does (pages of 2 rows, a grid of 10): the read started
    ahead at that page's end is not used, and no batch in between is skipped."""
    db = Database(tmp_path / "inside.duckdb")
    await _ten_batches(db, "counter")
    monkeypatch.setattr("stream.batches.PAGE_ROWS", 2)
    hub = Hub("inside", 30)
    gate = ReplayGate(reads=2, clients=10, shared=SharedPages(grid=10))
    session = Session(Client(Filter(), 30, 1 << 20), Outgoing("connected", "{}"), 13)
    with anyio.fail_after(10):
        got = [
            m
            async for page in catch_up(StoreSource(db, gate, hub.epoch), hub, session, gate)
            for m in page
        ]
    want = [
        m for b in read_batches(db.cursor(), 13, 30) for m in encode_batch(b, Filter(), "inside")
    ]
    assert [m.seq for m in got] == [15, 18, 21, 24, 27, 30]
    assert got == want
    db.close()


async def test_series_the_live_tail_read_are_known_to_catch_ups(tmp_path: Path) -> None:
    """The live tail and the catch-ups of one database hold one map of series strings, so
    a client resuming on a running server does not read them again."""
    db = Database(tmp_path / "tail.duckdb")
    await _ten_batches(db, "counter")
    hub = Hub("tail-known", 0)
    client = hub.add(Filter())
    tail = Tail(db, hub)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(tail.run)
        tail.notify(Appended(10, 28, 30, T0, frozenset({"local"}), time.time()))
        with anyio.fail_after(10):
            message = await client.next()
        assert message is not None and message.seq == 3  # the first of the ten it read
        tasks.cancel_scope.cancel()
    cur = db.cursor()
    ids = np.array(sorted(i for (i,) in cur.execute("SELECT id FROM series_keys").fetchall()))
    reads: list[str] = []
    assert sorted(known_series("tail-known").resolve(Traced(cur, reads), ids)) == ids.tolist()
    assert reads == []  # already known: no statement
    cur.close()
    db.close()
