"""The server writes live text frames itself (omnimetrics/ws_protocol.py): a real client
must read them whole at every length encoding, in order, with any text."""

from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from omnimetrics.ws_protocol import text_frame
from schemas.tenants import SettingsUpdate
from stream.encode import Filter, Outgoing
from stream.hub import Client
from tests.helpers import serve
from tests.stream.conftest import Running, push, recv, recv_type

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("text", ["", "a" * 125, "é" * 63, "b" * 126, "✓" * 30_000, "c" * 70_000])
def test_text_frame_is_what_the_websockets_parser_reads(text: str) -> None:
    parsed = _parse(text_frame(text))
    assert parsed.opcode is Opcode.TEXT and parsed.fin
    assert parsed.data.decode() == text


def _parse(frame: bytes) -> Frame:
    reader = Frame.parse(_bytes_reader(frame), mask=False)
    try:
        next(reader)
    except StopIteration as done:
        result: Frame = done.value
        return result
    raise AssertionError("the parser wanted more bytes than the frame has")


def _bytes_reader(frame: bytes):  # type: ignore[no-untyped-def]
    view = memoryview(frame)
    position = 0

    def read_exact(n: int):  # type: ignore[no-untyped-def]
        nonlocal position
        chunk = bytes(view[position : position + n])
        position += n
        if len(chunk) < n:
            yield  # never resumed: the test fails above
        return chunk

    return read_exact


async def test_live_messages_of_every_size_arrive_whole_and_in_order(
    running: Running, http: httpx.AsyncClient
) -> None:
    sizes = {"small": 1, "medium": 40, "large": 2_500}  # metrics per push
    async with connect(running.ws, max_size=None) as ws:
        await recv_type(ws, "connected")
        sent = []
        for name, count in sizes.items():
            metrics = {f"métrique_{name}_{i:05d}_✓": i for i in range(count)}
            sent.append((await push(http, source=name, metrics=metrics), metrics))
        got = [await recv_type(ws, "metrics") for _ in sizes]
        await ws.send('{"type": "ping"}')  # a reply written while the connection is idle
        assert (await recv(ws))["type"] == "pong"
    assert [m["seq"] for m in got] == [seq for seq, _ in sent]
    for message, (_, metrics), name in zip(got, sent, sizes, strict=True):
        assert message["data"][name] == metrics
    assert len(text_frame(str(got[-1]))) > 1 << 16  # the 8-byte length was exercised


async def test_a_client_that_falls_behind_keeps_its_order(tmp_path: Path) -> None:
    """Messages are written at once while the connection takes them, and queued while it
    is full (the client reads slower than the pushes come): in order, none twice, none
    missing, and the connection stays open (under its queue budget)."""
    unpaced = {"local": SettingsUpdate(max_events_per_minute=1_000_000)}
    settings = Settings(db=tmp_path / "f.duckdb", stream_queue_bytes=16 * 1024 * 1024)
    app = create_app(settings, Config(sources=[], tenants=unpaced))
    with serve(app) as base:
        async with (
            httpx.AsyncClient(base_url=base, timeout=10) as http,
            connect(base.replace("http", "ws") + "/ws/metrics", max_size=None, max_queue=2) as ws,
        ):
            await recv_type(ws, "connected")
            metrics = {f"m{i:04d}": i for i in range(2_000)}  # ~57 KB a message
            got: list[int] = []

            async def read_slowly() -> None:  # the connection fills, drains, fills...
                while len(got) < 60:
                    got.append((await recv_type(ws, "metrics"))["seq"])
                    await anyio.sleep(0.01)

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(read_slowly)
                    seqs = [await push(http, metrics=metrics) for _ in range(60)]
            assert got == seqs
            assert (await http.get("/health")).json()["streams"]["clients"] == 1


async def test_a_direct_write_never_overtakes_a_queued_message() -> None:
    """The race the queue guards against: a message queued while the connection was full,
    the connection drains, and the next message arrives before the sender ran."""
    wire: list[str] = []
    writable = False

    def direct(text: str) -> bool:  # the connection: takes a message only when writable
        if writable:
            wire.append(text)
        return writable

    client = Client(Filter(), 0, 1 << 20)
    client.direct = direct

    async def sender() -> None:  # as stream/ws.py sends what the client queued
        while (item := await client.next()) is not None:
            wire.append(item.text)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(sender)
        await anyio.sleep(0.01)  # the sender waits on an empty queue
        writable = True
        assert client.offer(Outgoing("metrics", "a", 1)) is True  # idle: written at once
        writable = False
        assert client.offer(Outgoing("metrics", "b", 2)) is False  # full: queued
        writable = True  # drained, and "c" comes before the sender has run
        assert client.offer(Outgoing("metrics", "c", 3)) is False
        await anyio.sleep(0.01)
        client.end()
    assert wire == ["a", "b", "c"]
