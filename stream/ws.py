"""`WS /ws/metrics`, as a bare ASGI endpoint.

A WebSocket lives for hours, and every layer between the server and this handler stays
suspended on its stack for all that time: routed through the framework's middleware, a
connection cost about 10 KiB more (tracemalloc, 1,000 connections). So the composition
root sends this path here directly; lifespan state arrives in `scope["state"]`.

Per connection: this coroutine reads client messages, one task sends. A slow client is
closed, never waited for: code 4008 with the cursor to resume from in the reason.
"""

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from pydantic import TypeAdapter, ValidationError

from schemas.auth import Principal
from schemas.http import describe_errors
from schemas.messages import ClientMessage, Ping
from schemas.models import StreamParams
from stream.encode import Filter, control
from stream.hub import Client, Hub, settings_tenant
from stream.replay import ReplayGate
from stream.session import Session, catch_up, enter_catch_up, error, open_session, sent
from stream.sources import CatchUpFailed, Source

Scope = dict[str, Any]
Receive = Any
Send = Any

PATH = "/ws/metrics"
MAX_MESSAGE_BYTES = 64 * 1024
SLOW_CONSUMER_CODE = 4008
TRY_AGAIN_LATER = 1013
SENDER_WAIT_SECONDS = 2.0
# An ASGI scope extension a server may offer: its `send` writes a text message at once
# and returns True, or returns False (writing nothing) when the connection cannot now.
SEND_TEXT_NOW = "omnimetrics.send_text_now"

_client_message: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


async def ws_metrics(scope: Scope, receive: Receive, send: Send) -> None:
    hub: Hub = scope["state"]["hub"]
    source: Source = scope["state"]["source"]
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
    try:
        params = StreamParams.model_validate(query)
    except ValidationError as exc:
        reason = describe_errors(exc.errors())[:120]
        await send({"type": "websocket.close", "code": 1008, "reason": reason})
        return
    flt = Filter(params.tenant_id, params.tool_id, params.session_id, params.label_filter())
    refusal = hub.policy(settings_tenant(flt)).refusal
    if refusal is not None:  # accepted first, so a browser can show the reason
        await send({"type": "websocket.close", "code": 1008, "reason": refusal})
        return
    full = hub.admit(settings_tenant(flt))
    if full is not None:
        reason, retry = full
        await send({"type": "websocket.close", "code": TRY_AGAIN_LATER,
                    "reason": f"{reason} (retry after {retry} s)"})  # fmt: skip
        return
    gate: ReplayGate = scope["state"]["replay"]
    ticket = enter_catch_up(gate, hub, params.since)
    if isinstance(ticket, int):
        reason = f"too many clients catching up (limit {gate.max_clients})"
        await send({"type": "websocket.close", "code": TRY_AGAIN_LATER,
                    "reason": f"{reason}; retry after {ticket} s"})  # fmt: skip
        return
    principal: Principal | None = scope["state"].get("principal")
    session = open_session(hub, flt, params.since, "WebSocket connection established", ticket)
    client = session.client
    direct = (scope.get("extensions") or {}).get(SEND_TEXT_NOW, {})
    client.direct = direct.get("send")
    send_many = direct.get("send_many")
    sender = asyncio.create_task(_send_all(send, send_many, source, hub, gate, session))
    try:
        await _receive_all(receive, hub, client, principal)
    finally:
        session.leave_catch_up()
        client.end()
        hub.remove(client)
        try:
            await asyncio.wait_for(sender, SENDER_WAIT_SECONDS)
        except TimeoutError:
            pass  # blocked on a peer that stopped reading; the server reaps the socket


async def _send_all(
    send: Send,
    send_many: Callable[[list[str]], bool] | None,
    source: Source,
    hub: Hub,
    gate: ReplayGate,
    session: Session,
) -> None:
    client = session.client
    try:
        await send({"type": "websocket.send", "text": session.connected.text})
        if session.resume_after is not None:
            try:
                async for page in catch_up(source, hub, session, gate):
                    if send_many is None or not send_many([item.text for item in page]):
                        for item in page:
                            await send({"type": "websocket.send", "text": item.text})
                    sent(client, page)
            except CatchUpFailed as exc:  # a gateway whose writer does not answer: later
                reason = f"cannot catch up now ({exc}"[:90] + f"); resume from {hub.epoch}:"
                await send({"type": "websocket.close", "code": TRY_AGAIN_LATER,
                            "reason": f"{reason}{client.sent_seq}"})  # fmt: skip
                return
        while (item_ := await client.next()) is not None:
            await send({"type": "websocket.send", "text": item_.text})
            if item_.seq is not None:
                client.sent_seq = item_.seq
                hub.sent(item_.seq)
        closing = _close_reason(client, hub.epoch)
        if closing is not None:
            await send({"type": "websocket.close", "code": closing[0], "reason": closing[1]})
    except (OSError, RuntimeError):
        client.end()  # the peer is gone


def _close_reason(client: Client, epoch: str) -> tuple[int, str] | None:
    cursor = f"{epoch}:{client.sent_seq}"
    if client.overflowed:
        return SLOW_CONSUMER_CODE, f"slow consumer; resume from {cursor}"
    if client.refused is not None:
        return 1008, client.refused
    if client.shutdown:
        return 1001, f"server shutting down; resume from {cursor}"
    if client.too_big:
        return 1009, f"message over {MAX_MESSAGE_BYTES} bytes"
    return None


async def _receive_all(
    receive: Receive, hub: Hub, client: Client, principal: Principal | None
) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            client.offer(error("binary frames are not supported; send JSON text"))
        elif len(text) > MAX_MESSAGE_BYTES:
            client.too_big = True
            client.end()
        else:
            _handle(text, hub, client, principal)


def _handle(text: str, hub: Hub, client: Client, principal: Principal | None) -> None:
    try:
        message = _client_message.validate_json(text)
    except ValidationError as exc:
        client.offer(error(f"bad message: {describe_errors(exc.errors())}"))
        return
    if isinstance(message, Ping):
        client.offer(control({"type": "pong"}))
        return
    tenant_id = message.tenant_id
    if principal is not None:  # the credential's tenant, never another
        if tenant_id not in (None, principal.tenant_id):
            reason = f"tenant_id: this credential is for {principal.tenant_id!r} only"
            client.end_for_policy(reason)
            return
        tenant_id = principal.tenant_id
    flt = Filter(tenant_id, message.tool_id, message.session_id, message.label_filter())
    hub.move(client, flt)
    client.offer(control({"type": "subscribed", **flt.described()}))
