"""Shared catch-up: clients resuming from nearby cursors read the store once between them.

Pages lie on a fixed grid of seqs: page k holds the batches after the end of the batch
that holds seq k·PAGE_ROWS, up to the end of the one that holds seq (k+1)·PAGE_ROWS
(never past what the stream has dispatched when it is read). Every client whose cursor
falls in a page takes that page: the first to ask starts its read (a task of its own, so
a client that leaves does not cancel it for the others), the others wait for the same
read, and each page is encoded once per filter. A client takes the batches after its
cursor and up to its own start in the live tail, so it gets every batch once, and the
tail goes on from there. The few pages used last are kept for the clients that follow,
with their messages (bounded in number and in bytes: the pages of a long run's past
filled a count of eight, tens of MiB); a cursor inside a batch is served on its own.
Where a page ends is known from its read's first statement (`end`), so a client can
start the next page's read while the rows of this one are still being read.
"""

import asyncio
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import duckdb

from stream.batches import PAGE_ROWS, Batch, KnownSeries, batch_ends, read_batches
from stream.encode import Filter, Outgoing, encode_batches

KEEP_PAGES = 8
KEEP_BYTES = 8 * 2**20  # what the pages kept hold at most, about (rows and messages)
KEEP_ENDS = 4_096  # grid points' batch ends
ENCODED_FILTERS = 32  # filters whose messages a page keeps; others are encoded per client
# What a page's parts hold beyond their text, about (columns, tuples, str headers).
ROW_BYTES, BATCH_BYTES, MESSAGE_BYTES = 64, 200, 120


@dataclass
class Page:
    start: int  # the batches after this seq
    end: int  # up to and including this one
    batches: list[Batch]
    ends: list[int] = field(init=False)  # each batch's last seq
    size: int = field(init=False)  # bytes it holds, about: its rows and the messages it keeps
    grew: Callable[[], None] | None = field(init=False, default=None)  # told when it keeps more
    _encoded: dict[Filter, "asyncio.Task[Encoded]"] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.ends = [batch.last_seq for batch in self.batches]
        rows = sum(batch.hi - batch.lo for batch in self.batches)
        self.size = rows * ROW_BYTES + len(self.batches) * BATCH_BYTES

    def serves(self, after: int) -> bool:
        """Whether the batches after `after` are whole batches of this page."""
        if not self.start <= after < self.end:
            return False
        i = bisect_right(self.ends, after)
        return after == self.start or (i > 0 and self.ends[i - 1] == after)

    async def encoded(self, flt: Filter, epoch: str) -> "Encoded":
        """Each batch's messages for `flt`: encoded once per filter, in a worker thread
        (a page of thousands of batches would hold the event loop for a while)."""
        task = self._encoded.get(flt)
        if task is None:
            work = anyio.to_thread.run_sync(_encoded, self.batches, flt, epoch)
            if len(self._encoded) >= ENCODED_FILTERS:
                return (await work)[0]
            task = self._encoded[flt] = asyncio.ensure_future(self._kept(work))
        return await asyncio.shield(task)

    async def _kept(self, work: Coroutine[Any, Any, tuple["Encoded", int]]) -> "Encoded":
        encoded, size = await work
        self.size += size
        if self.grew is not None:
            self.grew()
        return encoded

    def messages(self, encoded: "Encoded", after: int, upto: int) -> list[Outgoing]:
        """Of `encoded`, the messages of the batches in seq (after, upto]."""
        lo, hi = bisect_right(self.ends, after), bisect_right(self.ends, upto)
        return [message for messages in encoded[lo:hi] for message in messages]


Encoded = list[list[Outgoing]]  # per batch of a page


def _encoded(batches: list[Batch], flt: Filter, epoch: str) -> tuple[Encoded, int]:
    """`encode_batches`, and about how many bytes its messages hold."""
    encoded = encode_batches(batches, flt, epoch)
    return encoded, sum(len(m.text) + MESSAGE_BYTES for ms in encoded for m in ms)


class GridEnds:
    """Where the batches holding grid points end, as looked up (bounded). A committed
    batch never changes, and a page's last grid point is the next page's first, so each
    is looked up once (a lookup is ~1 ms of a wide page's ~15)."""

    def __init__(self, limit: int = KEEP_ENDS) -> None:
        self._ends: OrderedDict[int, int] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()  # pages are read in worker threads

    def of(self, cur: duckdb.DuckDBPyConnection, bound: int, *seqs: int) -> list[int]:
        """`batch_ends` of each of `seqs`; those at or below `bound` (a batch boundary the
        stream has reached: their batches are committed) are kept."""
        with self._lock:
            kept = {seq: self._ends[seq] for seq in seqs if seq in self._ends}
        missing = [seq for seq in seqs if seq not in kept]
        found = dict(zip(missing, batch_ends(cur, *missing), strict=True)) if missing else {}
        with self._lock:
            for seq, end in found.items():
                if seq <= bound:
                    self._ends[seq] = end
            while len(self._ends) > self._limit:
                self._ends.popitem(last=False)
        return [kept.get(seq, found.get(seq, seq)) for seq in seqs]


def read_page(
    cur: duckdb.DuckDBPyConnection,
    first: int,
    last: int,
    bound: int,
    known: KnownSeries,
    told: Callable[[int], None] | None = None,
    ends: GridEnds | None = None,
) -> Page:
    """The page between the ends of the batches holding seqs `first` and `last` (grid
    points), cut at `bound` (a batch boundary the stream has reached). `told` hears
    where it ends as soon as that is known, before its rows are read; `ends` keeps grid
    points' ends from one page to the next."""
    start, end = (ends or GridEnds()).of(cur, bound, first, last)
    end = min(end, bound)
    if told is not None:
        told(max(start, end))
    if end <= start:
        return Page(start, max(start, end), [])
    return Page(start, end, read_batches(cur, start, end, known))


Told = Callable[[int], None]  # called from the reading thread
Reader = Callable[[int, int, int, Told], Coroutine[Any, Any, Page]]  # read_page's arguments


class SharedPages:
    """The pages being read or read last, by grid cell."""

    def __init__(
        self, keep: int = KEEP_PAGES, grid: int = PAGE_ROWS, keep_bytes: int = KEEP_BYTES
    ) -> None:
        self._keep = keep
        self._keep_bytes = keep_bytes
        self._grid = grid
        self._pages: OrderedDict[int, asyncio.Task[Page]] = OrderedDict()
        self._ends: dict[asyncio.Task[Page], asyncio.Future[int]] = {}  # where each will end
        self.reads = 0  # pages read, since start
        self.ends = GridEnds()  # for the reads (`read_page`)

    async def page(self, after: int, bound: int, read: Reader) -> Page | None:
        """The page that serves a client at `after` (behind `bound`, the stream's
        position), read now or shared with others; None when `after` is inside a batch."""
        while True:
            task = self._task(after, bound, read)
            page = await asyncio.shield(task)
            if page.end > after:  # a later read of this cell would start there too
                return page if page.serves(after) else None
            # Read before the stream got this far: read the cell again, up to `bound`.
            if self._pages.get(after // self._grid) is task:
                self._forget(after // self._grid)

    async def end(self, after: int, bound: int, read: Reader) -> int | None:
        """Where the page that `page(after, ...)` gives will end, as soon as its read
        knows (before its rows are read), so the next page's read can start meanwhile;
        None where it will not tell (a read that must be done again, or failed)."""
        end_of = self._ends.get(self._task(after, bound, read))
        if end_of is None:
            return None
        try:
            end = await asyncio.shield(end_of)
        except LookupError:
            return None
        return end if end > after else None

    def _task(self, after: int, bound: int, read: Reader) -> "asyncio.Task[Page]":
        cell = after // self._grid
        task = self._pages.get(cell)
        if task is None or (task.done() and not _reaches(task, after)):
            return self._start(cell, bound, read)
        self._pages.move_to_end(cell)
        return task

    def _start(self, cell: int, bound: int, read: Reader) -> "asyncio.Task[Page]":
        loop = asyncio.get_running_loop()
        end: asyncio.Future[int] = loop.create_future()

        def told(at: int) -> None:  # from the reading thread
            loop.call_soon_threadsafe(_settle, end, at)

        task = asyncio.create_task(read(cell * self._grid, (cell + 1) * self._grid, bound, told))
        task.add_done_callback(lambda done: self._done(cell, done, end))
        if cell in self._pages:  # a read of it that ended too soon
            self._forget(cell)
        self._pages[cell] = task
        self._ends[task] = end
        self.reads += 1
        self._trim()
        return task

    @property
    def kept_bytes(self) -> int:
        """About how many bytes the pages read hold (their rows and messages)."""
        return sum(t.result().size for t in self._pages.values() if _read(t))

    def _trim(self) -> None:
        """Forget the pages used longest ago while more are kept than `keep` or they hold
        more than `keep_bytes`: never one still being read (clients wait on it), nor the
        one used last. A client already given a page keeps it until done with it."""
        read = [(c, t.result()) for c, t in self._pages.items() if _read(t)]
        count, held = len(self._pages), sum(page.size for _, page in read)
        for cell, page in read[:-1]:
            if count <= self._keep and held <= self._keep_bytes:
                break
            self._forget(cell)
            count, held = count - 1, held - page.size

    def _forget(self, cell: int) -> None:
        task = self._pages.pop(cell)
        self._ends.pop(task, None)
        if _read(task):
            task.result().grew = None

    def _done(self, cell: int, task: "asyncio.Task[Page]", end: "asyncio.Future[int]") -> None:
        failed = task.cancelled() or task.exception() is not None
        if not end.done():
            if failed:
                end.set_exception(LookupError("the read failed"))
                end.exception()  # nobody need retrieve it
            else:
                end.set_result(task.result().end)
        if failed and self._pages.get(cell) is task:
            self._forget(cell)  # the next client reads it anew
        elif not failed and self._pages.get(cell) is task:
            task.result().grew = self._trim
            self._trim()


def _settle(future: "asyncio.Future[int]", end: int) -> None:
    if not future.done():
        future.set_result(end)


def _read(task: "asyncio.Task[Page]") -> bool:
    """Whether the page's read is done and did not fail."""
    return task.done() and not task.cancelled() and task.exception() is None


def _reaches(task: "asyncio.Task[Page]", after: int) -> bool:
    return _read(task) and task.result().end > after
