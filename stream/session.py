"""What WS and SSE share: joining the hub, the `connected` message, and catching up."""

import asyncio
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from schemas.times import rfc3339, utcnow
from stream.cursor import BadCursor, parse_cursor
from stream.encode import Filter, Outgoing, control
from stream.hub import Client, Hub, settings_tenant
from stream.pages import Encoded, Page
from stream.replay import ReplayGate, Ticket
from stream.sources import Source

T = TypeVar("T")
AHEAD = 1  # pages encoded (or being encoded) ahead of the one being written


@dataclass
class Session:
    client: Client
    connected: Outgoing
    resume_after: int | None  # None: live only
    ticket: Ticket | None = None  # its place among the clients catching up

    def leave_catch_up(self) -> None:
        if self.ticket is not None:
            self.ticket.leave()


def enter_catch_up(gate: ReplayGate, hub: Hub, since: str | None) -> Ticket | int | None:
    """A place among the clients catching up for one resuming from `since`; None when it
    has nothing to catch up on; else the seconds after which to try again."""
    return gate.enter() if resumes(hub, since) else None


def open_session(
    hub: Hub,
    flt: Filter,
    since: str | None,
    greeting: str,
    ticket: Ticket | None = None,
    transport: str = "ws",
) -> Session:
    """Join the hub first, then decide the resume point: nothing is missed in between."""
    client = hub.add(flt, transport)
    try:
        session = _greet(hub, client, since, greeting)
    except BaseException:
        hub.remove(client)
        if ticket is not None:
            ticket.leave()
        raise
    session.ticket = ticket
    return session


def _greet(hub: Hub, client: Client, since: str | None, greeting: str) -> Session:
    flt = client.filter
    head = client.start_seq
    resumed: bool | None = None
    resume_error: str | None = None
    after: int | None = None
    if since:
        try:
            after = parse_cursor(since, hub.epoch, head)
            resumed = True
        except BadCursor as exc:
            resumed, resume_error = False, str(exc)
    interval = hub.policy(settings_tenant(flt)).interval_seconds
    message = {
        "type": "connected",
        "message": greeting,
        "interval": interval if interval is not None else 0,
        **flt.described(),
        "cursor": f"{hub.epoch}:{after if after is not None else head}",
        "resumed": resumed,
        "resume_error": resume_error,
    }
    connected = control(message)
    return Session(
        client, Outgoing("connected", connected.text, after if after is not None else head), after
    )


def resumes(hub: Hub, since: str | None) -> bool:
    """Whether a client with this cursor has batches to catch up on (a bad cursor: no,
    it goes live and is told why)."""
    if not since:
        return False
    try:
        return parse_cursor(since, hub.epoch, hub.position) < hub.position
    except BadCursor:
        return False


async def catch_up(
    source: Source, hub: Hub, session: Session, gate: ReplayGate
) -> AsyncIterator[list[Outgoing]]:
    """Every batch after the session's resume point up to the client's start, from
    `source` in pages (the store's are shared with the other clients catching up nearby:
    stream/pages.py), for its filter, a page's messages at a time. Reading runs ahead of
    the client: while one page is written, the next is encoded and the one after it read
    (in worker threads, mostly outside the GIL). The client leaves the gate when done."""
    client = session.client
    position = session.resume_after if session.resume_after is not None else client.start_seq

    def read_at(after: int) -> Coroutine[Any, Any, Page]:
        return source.page(after, hub.position)

    ready: asyncio.Queue[asyncio.Future[tuple[Page, Encoded]]] = asyncio.Queue(AHEAD)

    async def encoded(page: Page) -> tuple[Page, Encoded]:
        return page, await page.encoded(client.filter, hub.epoch)

    async def run_ahead(after: int) -> None:
        # Each page's read starts as soon as the one before it knows where it ends (its
        # first statement), so two reads go on at once; each page is encoded as soon as
        # it is read. A guess that proves wrong (a page cut at the stream's position
        # meanwhile, a cursor inside a batch) is read again from where the page ended.
        reading: asyncio.Future[Page] = _ahead(read_at(after))
        nxt: asyncio.Future[Page] | None = None
        try:
            while True:
                end = await source.end(after, hub.position)
                if end is not None and end < client.start_seq:
                    nxt = _ahead(read_at(end))
                try:
                    page = await reading
                except Exception as exc:  # the client's next page fails with it
                    failed: asyncio.Future[tuple[Page, Encoded]] = asyncio.Future()
                    failed.set_exception(exc)
                    await ready.put(failed)
                    return
                await ready.put(_ahead(encoded(page)))  # encoded while the next is read
                after = page.end
                if after >= client.start_seq:
                    return
                if nxt is None or end != after:
                    if nxt is not None:
                        nxt.cancel()
                    nxt = _ahead(read_at(after))
                reading, nxt = nxt, None
        finally:
            for work in (reading, nxt):
                if work is not None:
                    work.cancel()

    reader = asyncio.create_task(run_ahead(position))
    try:
        while position < client.start_seq:
            page, messages_of = await (await ready.get())
            gate.served += 1
            await gate.turn()  # from here nothing waits until the caller has written them
            messages = page.messages(messages_of, position, client.start_seq)
            if messages:
                yield messages
            position = min(page.end, client.start_seq)
    finally:
        reader.cancel()
        while not ready.empty():
            ready.get_nowait().cancel()
        session.leave_catch_up()


def _ahead(work: Coroutine[Any, Any, T]) -> "asyncio.Future[T]":
    """`work` started ahead of the client; if the client leaves before taking its result,
    its error is not logged."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(_retrieved)
    return task


def _retrieved(task: "asyncio.Future[Any]") -> None:
    if not task.cancelled():
        task.exception()


def sent(client: Client, page: list[Outgoing]) -> None:
    """`page` is written: the client's cursor is now its last batch."""
    for item in reversed(page):
        if item.seq is not None:
            client.sent_seq = item.seq
            return


def error(text: str) -> Outgoing:
    return control({"type": "error", "error": text, "source": None, "timestamp": rfc3339(utcnow())})
