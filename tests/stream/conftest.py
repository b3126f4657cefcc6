"""A real server with no scraped sources; batches come from pushes the test makes."""

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
from omnimetrics.settings import Config, Settings
from schemas.messages import ServerMessage
from tests.helpers import serve

_message: TypeAdapter[Any] = TypeAdapter(ServerMessage)


@dataclass
class Running:
    base: str
    db: Path

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://") + "/ws/metrics"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    path = tmp_path / "stream.duckdb"
    with serve(create_app(Settings(db=path), Config(sources=[]))) as base:
        yield Running(base, path)


@pytest.fixture
async def http(running: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=running.base, timeout=10) as client:
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
