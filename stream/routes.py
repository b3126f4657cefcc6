"""`WS /ws/metrics` and `GET /stream/metrics` (SSE).

Both read the hub and the database from the lifespan state (`hub`, `db`). A slow client
is closed, never waited for: WS with code 4008 and a reason carrying the cursor to resume
from, SSE with a final `gap` event (browsers then resume by Last-Event-ID).
"""

from collections.abc import AsyncIterator
from typing import Annotated, cast

import anyio
from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter, ValidationError
from starlette.websockets import WebSocketDisconnect

from schemas.db import Database
from schemas.http import describe_errors
from schemas.messages import ClientMessage, Ping
from schemas.models import StreamParams
from stream.encode import Filter, Outgoing, control
from stream.hub import Client, Hub
from stream.session import catch_up, error, open_session

MAX_MESSAGE_BYTES = 64 * 1024
SLOW_CONSUMER_CODE = 4008
SSE_KEEPALIVE_SECONDS = 15.0
SSE_RETRY_MS = 3000
CLOSE_WAIT_SECONDS = 2.0

router = APIRouter()
_client_message: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


def _filter(params: StreamParams) -> Filter:
    return Filter(params.tenant_id, params.tool_id, params.session_id)


# ---- WebSocket ----


@router.websocket("/ws/metrics")
async def ws_metrics(ws: WebSocket) -> None:
    hub, db = cast(Hub, ws.state.hub), cast(Database, ws.state.db)
    await ws.accept()
    try:
        params = StreamParams.model_validate(dict(ws.query_params))
    except ValidationError as exc:
        await ws.close(1008, describe_errors(exc.errors())[:120])
        return
    session = await open_session(
        db, hub, _filter(params), params.since, "WebSocket connection established"
    )
    client = session.client
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_ws_send, ws, db, hub, client, session.connected, session.resume_after)
            tasks.start_soon(_ws_receive, ws, hub, client)
            await client.ended.wait()
            tasks.cancel_scope.cancel()
    finally:
        hub.remove(client)
    cursor = f"{hub.epoch}:{client.sent_seq}"
    if client.overflowed:
        await _close(ws, SLOW_CONSUMER_CODE, f"slow consumer; resume from {cursor}")
    elif client.shutdown:
        await _close(ws, 1001, f"server shutting down; resume from {cursor}")
    elif client.too_big:
        await _close(ws, 1009, f"message over {MAX_MESSAGE_BYTES} bytes")


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with anyio.move_on_after(CLOSE_WAIT_SECONDS):
        try:
            await ws.close(code, reason)
        except (RuntimeError, OSError, WebSocketDisconnect):
            pass  # already gone


async def _ws_send(
    ws: WebSocket, db: Database, hub: Hub, client: Client, connected: Outgoing, after: int | None
) -> None:
    try:
        await ws.send_text(connected.text)
        if after is not None:
            async for item in catch_up(db, hub, client, after):
                await ws.send_text(item.text)
                if item.seq is not None:
                    client.sent_seq = item.seq
        while (item_ := await client.next()) is not None:
            await ws.send_text(item_.text)
            if item_.seq is not None:
                client.sent_seq = item_.seq
    except (WebSocketDisconnect, RuntimeError, OSError):
        client.end()


async def _ws_receive(ws: WebSocket, hub: Hub, client: Client) -> None:
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                client.end()
                return
            text = message.get("text")
            if text is None:
                client.offer(error("binary frames are not supported; send JSON text"))
                continue
            if len(text) > MAX_MESSAGE_BYTES:
                client.too_big = True
                client.end()
                return
            _handle(text, hub, client)
    except (WebSocketDisconnect, RuntimeError, OSError):
        client.end()


def _handle(text: str, hub: Hub, client: Client) -> None:
    try:
        message = _client_message.validate_json(text)
    except ValidationError as exc:
        client.offer(error(f"bad message: {describe_errors(exc.errors())}"))
        return
    if isinstance(message, Ping):
        client.offer(control({"type": "pong"}))
        return
    flt = Filter(message.tenant_id, message.tool_id, message.session_id)
    hub.move(client, flt)
    client.offer(control({"type": "subscribed", **flt._asdict()}))


# ---- Server-sent events ----


@router.get("/stream/metrics", response_class=StreamingResponse)
async def sse_metrics(
    request: Request, params: Annotated[StreamParams, Query()]
) -> StreamingResponse:
    """Live metrics as server-sent events; resumes from `since` or `Last-Event-ID`."""
    hub, db = cast(Hub, request.state.hub), cast(Database, request.state.db)
    since = params.since or request.headers.get("last-event-id")
    return StreamingResponse(
        _sse_events(db, hub, _filter(params), since),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _frame(item: Outgoing, epoch: str) -> bytes:
    cursor = f"id: {epoch}:{item.seq}\n" if item.seq is not None else ""
    return f"event: {item.type}\n{cursor}data: {item.text}\n\n".encode()


async def _sse_events(
    db: Database, hub: Hub, flt: Filter, since: str | None
) -> AsyncIterator[bytes]:
    session = await open_session(db, hub, flt, since, "SSE connection established")
    client = session.client
    try:
        yield f"retry: {SSE_RETRY_MS}\n\n".encode()
        yield _frame(session.connected, hub.epoch)
        if session.resume_after is not None:
            async for item in catch_up(db, hub, client, session.resume_after):
                yield _frame(item, hub.epoch)
                if item.seq is not None:
                    client.sent_seq = item.seq
        while True:
            item_: Outgoing | None = None
            with anyio.move_on_after(SSE_KEEPALIVE_SECONDS) as waited:
                item_ = await client.next()
            if waited.cancelled_caught:
                yield b": keepalive\n\n"
                continue
            if item_ is None:
                break
            yield _frame(item_, hub.epoch)
            if item_.seq is not None:
                client.sent_seq = item_.seq
        if client.overflowed:
            cursor = f"{hub.epoch}:{client.sent_seq}"
            gap = control(
                {"type": "gap", "cursor": cursor, "reason": "slow consumer; resume from the cursor"}
            )
            yield _frame(gap, hub.epoch)
    finally:
        hub.remove(client)
