"""Where resuming clients' pages come from (`Source`): the store, for `serve`
(`StoreSource`: DuckDB pages shared between clients nearby, stream/pages.py), or, for a
gateway, the batches it holds from the Redis stream and else the writer's
`/api/v1/batches` (`RemoteSource`). Catch-up (stream/session.py) is the same over both."""

import asyncio
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol

from schemas.db import Database
from schemas.outcomes import Outcome
from stream.batches import PAGE_ROWS, Batch, known_series, page_end, read_batches
from stream.pages import Page, Told, read_page
from stream.replay import ReplayGate

KEEP_FETCHED = 8  # pages fetched from the writer kept for the clients that follow
RECENT_ROWS = 200_000  # rows of the latest batches a gateway keeps for resuming clients


class CatchUpFailed(Exception):
    """What a resuming client needs cannot be had now (the writer does not answer)."""


class Source(Protocol):
    async def page(self, after: int, bound: int) -> Page:
        """Whole batches after `after` (a cursor), up to at most `bound` (a batch boundary
        the stream has reached), about PAGE_ROWS rows of them; raises CatchUpFailed."""
        ...

    async def end(self, after: int, bound: int) -> int | None:
        """Where `page(after, bound)` will end, when that is known before its rows are
        (so the next page's read can start meanwhile); else None."""
        ...


class StoreSource:
    """Pages read from DuckDB, each on the grid shared by the clients nearby."""

    def __init__(self, db: Database, gate: ReplayGate, epoch: str) -> None:
        self._db = db
        self._gate = gate
        self._known = known_series(epoch)

    async def _read(self, first: int, last: int, bound: int, told: Told) -> Page:
        async with self._gate.read():
            read = partial(read_page, first=first, last=last, bound=bound, known=self._known,
                           told=told, ends=self._gate.shared.ends)  # fmt: skip
            return await self._db.read(read)

    async def page(self, after: int, bound: int) -> Page:
        page = await self._gate.shared.page(after, bound, self._read)
        if page is None:  # a cursor inside a batch: from there to a batch's end, on its own
            async with self._gate.read():
                end = await self._db.read(partial(page_end, after=after, head=bound))
                read = partial(read_batches, after=after, upto=end, known=self._known)
                page = Page(after, end, await self._db.read(read))
        return page

    async def end(self, after: int, bound: int) -> int | None:
        return await self._gate.shared.end(after, bound, self._read)


Fill = Callable[[int], Awaitable[tuple[list[Batch], int, bool]]]  # after -> batches, end, more


class Recent:
    """The latest batches a gateway handed out, in seq order, about `keep_rows` rows:
    every batch after `start` up to `end`."""

    def __init__(self, start: int, keep_rows: int = RECENT_ROWS) -> None:
        self.start = self.end = start
        self._batches: deque[Batch] = deque()
        self._rows = 0
        self._keep_rows = keep_rows

    def add(self, batches: Sequence[Batch], upto: int) -> None:
        """Batches in seq order right after `end`, reaching `upto`."""
        for batch in batches:
            self._batches.append(batch)
            self._rows += batch.hi - batch.lo
        self.end = max(self.end, upto)
        while self._rows > self._keep_rows and len(self._batches) > 1:
            dropped = self._batches.popleft()
            self._rows -= dropped.hi - dropped.lo
            self.start = dropped.last_seq

    def page(self, after: int, bound: int) -> Page | None:
        """The page after `after` up to `bound` from what is held; None if it starts earlier."""
        if not self.start <= after <= self.end:
            return None
        held = list(self._batches)
        i = bisect_right([b.last_seq for b in held], after)
        batches: list[Batch] = []
        rows = 0
        for batch in held[i:]:
            if batch.last_seq > bound:
                break
            if batches and rows + batch.hi - batch.lo > PAGE_ROWS:
                return Page(after, batches[-1].last_seq, batches)
            batches.append(_from(batch, after))
            rows += batch.hi - batch.lo
        # Everything up to the bound (or all that is held): seqs that no batch used (a
        # failed write's) are passed too.
        return Page(after, max(after, min(bound, self.end)), batches)


def _from(batch: Batch, after: int) -> Batch:
    """`batch` without its rows up to `after` (a cursor inside it)."""
    seqs = batch.block.seq
    if int(seqs[batch.lo]) > after:
        return batch
    lo = batch.lo + int(bisect_right(seqs[batch.lo : batch.hi], after))
    return batch._replace(lo=lo)


class RemoteSource:
    """A gateway's pages: from the batches it holds when they reach back far enough, else
    from the writer (`fill`), one fetch per cursor shared by the clients at it."""

    def __init__(self, fill: Fill, gate: ReplayGate, recent: Recent) -> None:
        self._fill = fill
        self._gate = gate
        self.recent = recent
        self._fetched: OrderedDict[int, asyncio.Task[Page]] = OrderedDict()
        self.fetches = 0  # pages fetched from the writer, since start
        self.outcome = Outcome("catching clients up from the writer")

    async def page(self, after: int, bound: int) -> Page:
        held = self.recent.page(after, bound)
        if held is not None:
            return held
        task = self._fetched.get(after)
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            task = self._fetched[after] = asyncio.create_task(self._fetch(after))
            while len(self._fetched) > KEEP_FETCHED:
                self._fetched.popitem(last=False)
        self._fetched.move_to_end(after)
        page = await asyncio.shield(task)
        kept = [b for b in page.batches if b.last_seq <= bound]
        return Page(after, min(page.end, bound), kept)

    async def _fetch(self, after: int) -> Page:
        async with self._gate.read():
            self.fetches += 1
            try:
                batches, end, _ = await self._fill(after)
            except CatchUpFailed as exc:
                self.outcome.failed(exc)
                raise
        self.outcome.succeeded()
        return Page(after, max(after, end), batches)

    async def end(self, after: int, bound: int) -> int | None:
        return None
