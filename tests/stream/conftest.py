"""A real server with no scraped sources; batches come from pushes the test makes.

`running` is the stream contract's backend (STYLE.md 15): `serve` alone, or `serve`
publishing to a real redis-server with a gateway in front that serves the streams. Pushes
go to the writer (`base`), streams and their `/health` to `stream`."""

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from pydantic import TypeAdapter
from websockets.asyncio.client import ClientConnection

from omnimetrics.app import create_app
from omnimetrics.gateway import create_gateway
from omnimetrics.settings import Config, Settings
from schemas.messages import ServerMessage
from tests.helpers import RedisServer, serve

_message: TypeAdapter[Any] = TypeAdapter(ServerMessage)


@dataclass
class Running:
    base: str  # the writer
    db: Path
    stream: str  # where the streams are served: the writer, or a gateway

    @property
    def ws(self) -> str:
        return self.stream.replace("http://", "ws://") + "/ws/metrics"


@pytest.fixture(params=["serve", "gateway"])
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    path = tmp_path / "stream.duckdb"
    if request.param == "serve":
        with serve(create_app(Settings(db=path), Config(sources=[]))) as base:
            yield Running(base, path, base)
        return
    with RedisServer(tmp_path) as redis:
        writer = create_app(Settings(db=path, redis_url=redis.url), Config(sources=[]))
        with serve(writer) as base:
            gateway = create_gateway(Settings(redis_url=redis.url, writer_url=base))
            with serve(gateway) as stream:
                yield Running(base, path, stream)


@pytest.fixture
async def http(running: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=running.base, timeout=10) as client:
        yield client


@pytest.fixture
async def streams(running: Running) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the streams' server (SSE, its `/health`)."""
    async with httpx.AsyncClient(base_url=running.stream, timeout=10) as client:
        yield client


async def push(http: httpx.AsyncClient, **fields: Any) -> int:
    body = {"source": "compression", "kind": "counter", "metrics": {"total": 1}, **fields}
    response = await http.post("/ingest", json=body)
    assert response.status_code == 202, response.text
    seq: int = response.json()["seq"]
    return seq


def checked(text: str | bytes) -> dict[str, Any]:
    """Parse a server message and check it against the contract's models."""
    doc: dict[str, Any] = orjson.loads(text)
    _message.validate_python(doc)
    return doc


async def recv(ws: ClientConnection, wait: float = 5.0) -> dict[str, Any]:
    with anyio.fail_after(wait):
        return checked(await ws.recv())


async def recv_type(ws: ClientConnection, kind: str, wait: float = 5.0) -> dict[str, Any]:
    """The next message, which must be of type `kind`."""
    message = await recv(ws, wait)
    assert message["type"] == kind, message
    return message


async def sse_frames(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """Server-sent event frames as dicts of their fields (comments become `comment`)."""
    frame: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if frame:
                yield frame
            frame = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            frame[name] = value.removeprefix(" ")
