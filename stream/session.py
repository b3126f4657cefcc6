"""What WS and SSE share: joining the hub, the `connected` message, and catching up."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

from schemas.db import Database
from schemas.times import rfc3339, utcnow
from stream.batches import known_series, page_end, read_batches
from stream.cursor import BadCursor, parse_cursor
from stream.encode import Filter, Outgoing, control
from stream.hub import Client, Hub, settings_tenant
from stream.pages import Page, read_page
from stream.replay import ReplayGate, Ticket


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


async def open_session(
    db: Database,
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
        session = await _greet(db, hub, client, since, greeting)
    except BaseException:
        hub.remove(client)
        if ticket is not None:
            ticket.leave()
        raise
    session.ticket = ticket
    return session


async def _greet(
    db: Database, hub: Hub, client: Client, since: str | None, greeting: str
) -> Session:
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
    db: Database, hub: Hub, session: Session, gate: ReplayGate
) -> AsyncIterator[list[Outgoing]]:
    """Every batch after the session's resume point up to the client's start, from DuckDB
    in pages, for its filter, a page's messages at a time. Pages are shared with the other
    clients catching up nearby (stream/pages.py); each read takes one of the gate's slots.
    The client leaves the gate when done."""
    client = session.client
    position = session.resume_after if session.resume_after is not None else client.start_seq
    known = known_series(hub.epoch)

    async def read(first: int, last: int, bound: int) -> Page:
        async with gate.read():
            return await db.read(
                partial(read_page, first=first, last=last, bound=bound, known=known)
            )

    async def prefetch(after: int) -> None:
        page = await gate.shared.page(after, hub.position, read, ahead=True)
        if page is not None:
            await page.encoded(client.filter, hub.epoch)

    ahead: asyncio.Task[None] | None = None
    try:
        while position < client.start_seq:
            page = await gate.shared.page(position, hub.position, read)
            if page is None:  # a cursor inside a batch: from there to a batch's end, on its own
                async with gate.read():
                    end = await db.read(partial(page_end, after=position, head=client.start_seq))
                    batches = await db.read(
                        partial(read_batches, after=position, upto=end, known=known)
                    )
                page = Page(position, end, batches)
            encoded = await page.encoded(client.filter, hub.epoch)
            if page.end < client.start_seq and (ahead is None or ahead.done()):
                # The next page is read and encoded (in worker threads) while this one is
                # written.
                ahead = asyncio.create_task(prefetch(page.end))
                ahead.add_done_callback(_retrieved)
            await gate.turn()  # from here nothing waits until the caller has written them
            messages = page.messages(encoded, position, client.start_seq)
            end = page.end
            if messages:
                yield messages
            position = min(end, client.start_seq)
    finally:
        if ahead is not None:
            ahead.cancel()
        session.leave_catch_up()


def _retrieved(task: "asyncio.Task[None]") -> None:
    """A read ahead that failed: the client's own read of that page retries it."""
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
