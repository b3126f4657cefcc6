"""`GET /stream/metrics` (SSE) and `GET /api/v1/batches` (the stream's batches, paged, for
gateways and replays); `WS /ws/metrics` is the bare ASGI endpoint in ws.py.

It reads the hub and the database from the lifespan state (`hub`, `db`). A slow client
is never waited for: its stream ends with a final `gap` event carrying the cursor, and
browsers then resume by Last-Event-ID.
"""

from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, cast

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.responses import Response

from schemas.db import Database
from schemas.http import error_response
from schemas.models import MAX_CURSOR_CHARS, BatchesParams, StreamFilter, StreamParams
from stream.batches import known_series
from stream.cursor import BadCursor, parse_cursor
from stream.encode import Filter, Outgoing, control
from stream.history import page_json, read_batches_after
from stream.hub import Hub, settings_tenant
from stream.replay import ReplayGate, Ticket
from stream.session import catch_up, enter_catch_up, error, open_session, sent
from stream.sources import CatchUpFailed, Source
from stream.wire import encode_page

SSE_RETRY_MS = 3000

router = APIRouter()  # the streams: served by `serve` and by gateways
batches_router = APIRouter()  # the writer's


def _filter(params: StreamFilter) -> Filter:
    return Filter(params.tenant_id, params.tool_id, params.session_id, params.label_filter())


@router.get("/stream/metrics", response_class=StreamingResponse)
async def sse_metrics(request: Request, params: Annotated[StreamParams, Query()]) -> Response:
    """Live metrics as server-sent events; resumes from `since` or `Last-Event-ID`.
    403 while the tenant's settings turn streaming off."""
    hub, source = cast(Hub, request.state.hub), cast(Source, request.state.source)
    flt = _filter(params)
    refusal = hub.policy(settings_tenant(flt)).refusal
    if refusal is not None:
        return error_response(403, refusal)
    full = hub.admit(settings_tenant(flt))
    if full is not None:
        reason, retry = full
        return error_response(503, reason, None, **{"Retry-After": str(retry)})
    since = params.since or request.headers.get("last-event-id")
    if since is not None and len(since) > MAX_CURSOR_CHARS:
        return error_response(
            422, f"Last-Event-ID: at most {MAX_CURSOR_CHARS} characters (a cursor is epoch:seq)"
        )
    gate = cast(ReplayGate, request.state.replay)
    ticket = enter_catch_up(gate, hub, since)
    if isinstance(ticket, int):
        reason = f"too many clients catching up (limit {gate.max_clients}); retry later"
        return error_response(503, reason, None, **{"Retry-After": str(ticket)})
    return StreamingResponse(
        _sse_events(source, hub, gate, ticket, flt, since),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@batches_router.get("/api/v1/batches")
async def batches(request: Request, params: Annotated[BatchesParams, Query()]) -> Response:
    """The batches after `since` (from the first stored one without it), in seq order,
    each with its rows and their deltas; at most `limit` batches and about 100,000 rows a
    page, then `cursor` for the next page and `more` (stream/history.py)."""
    hub, db = cast(Hub, request.state.hub), cast(Database, request.state.db)
    head = hub.position
    after = 0
    if params.since is not None:
        try:
            after = parse_cursor(params.since, hub.epoch, head)
        except BadCursor as exc:
            reason = str(exc).split(";")[0]  # not "starting from now": nothing starts here
            return error_response(422, f"since: {reason} (this database's epoch is {hub.epoch})")
    flt, packed = _filter(params), _wants_msgpack(request)
    if packed and flt != Filter():
        return error_response(422, "the MessagePack form is the whole stream (for gateways); "
                              "filters are for the JSON form")  # fmt: skip
    gate = cast(ReplayGate, request.state.replay)
    known = known_series(hub.epoch)
    async with gate.read():
        page = await db.read(partial(read_batches_after, after=after, head=head, known=known,
                                     limit=params.limit))  # fmt: skip
    if packed:  # a gateway: the whole stream, by column
        cursor = f"{hub.epoch}:{page.end}"
        body = await anyio.to_thread.run_sync(encode_page, page.batches, cursor, page.end < head)
        return Response(body, media_type=MSGPACK)
    body = await anyio.to_thread.run_sync(page_json, page, head, flt, hub.epoch)
    return Response(body, media_type="application/json")


MSGPACK = "application/msgpack"


def _wants_msgpack(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return any(kind.split(";")[0].strip() in (MSGPACK, "application/x-msgpack")
               for kind in accept.split(","))  # fmt: skip


def _frame(item: Outgoing, epoch: str) -> bytes:
    cursor = f"id: {epoch}:{item.seq}\n" if item.seq is not None else ""
    return f"event: {item.type}\n{cursor}data: {item.text}\n\n".encode()


async def _sse_events(
    source: Source,
    hub: Hub,
    gate: ReplayGate,
    ticket: Ticket | None,
    flt: Filter,
    since: str | None,
) -> AsyncIterator[bytes]:
    session = open_session(hub, flt, since, "SSE connection established", ticket, "sse")
    client = session.client
    try:
        yield f"retry: {SSE_RETRY_MS}\n\n".encode()
        yield _frame(session.connected, hub.epoch)
        if session.resume_after is not None:
            try:
                async for page in catch_up(source, hub, session, gate):
                    yield b"".join(_frame(item, hub.epoch) for item in page)  # one write a page
                    sent(client, page)
            except CatchUpFailed as exc:  # a gateway whose writer does not answer: later
                yield _frame(error(f"cannot catch up now ({exc}); reconnect later"), hub.epoch)
                return
        while True:
            item_: Outgoing | None = None
            with anyio.move_on_after(hub.keepalive_seconds) as waited:
                item_ = await client.next()
            if waited.cancelled_caught:
                yield b": keepalive\n\n"
                continue
            if item_ is None:
                break
            yield _frame(item_, hub.epoch)
            if item_.seq is not None:
                client.sent_seq = item_.seq
                hub.sent(item_.seq)
        if client.refused is not None:
            yield _frame(error(client.refused), hub.epoch)
        if client.overflowed:
            cursor = f"{hub.epoch}:{client.sent_seq}"
            gap = control(
                {"type": "gap", "cursor": cursor, "reason": "slow consumer; resume from the cursor"}
            )
            yield _frame(gap, hub.epoch)
    finally:
        session.leave_catch_up()
        hub.remove(client)
