"""A WebSocket fuzz: garbage text, binary frames, huge frames, thousands of subscribes,
abrupt disconnects. The server never crashes, leaks no task, and stores nothing."""

import asyncio
import random
import socket
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from tests.helpers import serve, wait_for
from tests.stream.conftest import recv_type

pytestmark = pytest.mark.anyio
HANDSHAKE = (
    b"GET /ws/metrics HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def tasks(loop: asyncio.AbstractEventLoop) -> int:
    return len(running(loop))


def running(loop: asyncio.AbstractEventLoop) -> list[str]:
    """What each task on the server's loop runs (its coroutine), for a failure to name."""

    async def names() -> list[str]:
        return sorted(repr(task.get_coro()) for task in asyncio.all_tasks())

    return asyncio.run_coroutine_threadsafe(names(), loop).result(timeout=10)


async def drain(ws: ClientConnection) -> list[dict[str, Any]]:
    """Everything the server says until it closes (or goes quiet for a moment)."""
    import orjson

    got = []
    try:
        while True:
            got.append(orjson.loads(await asyncio.wait_for(ws.recv(), 1.0)))
    except (TimeoutError, ConnectionClosed):
        return got


def garbage(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))).decode(
            "utf-8", errors="replace"
        )
    if kind == 1:
        return "{" * rng.randrange(1, 5000)  # deep nesting
    if kind == 2:
        return '{"type": "subscribe", "tenant_id": ' + repr("x" * rng.randrange(0, 300)) + "}"
    if kind == 3:
        return '{"type": "subscribe", "tool_id": null, "extra": [1, 2, {"a": NaN}]}'
    if kind == 4:
        return '{"type": "ping", "type": "subscribe"}'
    return rng.choice(['"just a string"', "[]", "null", "1e999", '{"type": 7}', ""])


async def test_the_server_survives_a_websocket_fuzz(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    loops: list[asyncio.AbstractEventLoop] = []
    app = create_app(Settings(db=tmp_path / "fuzz.duckdb"), Config(sources=[]))
    with serve(app, loops=loops) as base:
        ws_url = base.replace("http://", "ws://") + "/ws/metrics"
        loop = loops[0]
        async with connect(ws_url) as warm:  # let every lazily started task exist
            await recv_type(warm, "connected")
        wait_for(lambda: httpx.get(f"{base}/health").json()["streams"]["clients"] == 0)
        before, were = tasks(loop), running(loop)

        # Garbage text and binary frames: an error message each, the connection stays.
        async with connect(ws_url) as ws:
            await recv_type(ws, "connected")
            for _ in range(300):
                if rng.random() < 0.3:
                    await ws.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
                else:
                    await ws.send(garbage(rng))
            await ws.send('{"type": "ping"}')
            replies = await drain(ws)
            assert replies[-1]["type"] == "pong" and ws.close_code is None
            assert all(r["type"] in ("error", "subscribed", "pong") for r in replies)

        # Thousands of subscribes: the last one counts, nothing piles up.
        async with connect(ws_url) as ws:
            await recv_type(ws, "connected")
            for i in range(3000):
                await ws.send(f'{{"type": "subscribe", "tool_id": "t{i % 17}"}}')
            await ws.send('{"type": "subscribe", "tool_id": "final"}')
            await ws.send('{"type": "ping"}')
            replies = await drain(ws)
            subscribed = [r for r in replies if r["type"] == "subscribed"]
            assert subscribed[-1]["tool_id"] == "final" and replies[-1]["type"] == "pong"

        # Huge frames: closed with 1009, others unaffected.
        async with connect(ws_url, max_size=None) as ws:
            await recv_type(ws, "connected")
            await ws.send("x" * (64 * 1024 + 1))
            await drain(ws)
            assert ws.close_code == 1009

        # Abrupt disconnects: mid-handshake, right after it, and with messages in flight.
        host, port = base.removeprefix("http://").split(":")
        for i in range(30):
            sock = socket.create_connection((host, int(port)))
            if i % 3:
                sock.sendall(HANDSHAKE)
            if i % 3 == 2:
                sock.sendall(bytes(rng.randrange(256) for _ in range(100)))  # not even a frame
            sock.close()
        for _ in range(20):
            ws = await connect(ws_url)
            await ws.send('{"type": "subscribe", "tool_id": "gone"}')
            ws.transport.abort()

        # Still serving, holding nothing, and nothing was stored.
        await asyncio.sleep(0.2)  # let this loop close the aborted sockets

        async with httpx.AsyncClient(base_url=base) as http:
            for _ in range(300):  # up to 30 s for the server to notice every peer gone
                clients = (await http.get("/health")).json()["streams"]["clients"]
                if clients == 0 and tasks(loop) <= before:
                    break
                await anyio.sleep(0.1)
            now = running(loop)
            assert clients == 0 and len(now) <= before, (clients, were, now)
            async with connect(ws_url) as ws:
                await recv_type(ws, "connected")
            stored = await http.get("/api/v1/series", params={"from": "2000-01-01T00:00:00Z"})
            assert stored.json()["samples"] == []
