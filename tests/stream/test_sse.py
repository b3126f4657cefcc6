"""Server-sent events: the same messages, `id:` cursors, Last-Event-ID resume."""

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from tests.helpers import serve
from tests.stream.conftest import checked, push, sse_frames

pytestmark = pytest.mark.anyio


async def events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    async for frame in sse_frames(response):
        if "data" in frame:
            checked(frame["data"])
            yield frame


async def test_sse_streams_connected_then_metrics_with_cursor_ids(
    http: httpx.AsyncClient, streams: httpx.AsyncClient
) -> None:
    async with streams.stream("GET", "/stream/metrics", params={"tool_id": "a"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = events(response)
        with anyio.fail_after(5):
            hello = await anext(frames)
            assert hello["event"] == "connected"
            await push(http, tool_id="b")
            seq = await push(http, tool_id="a")
            metrics = await anext(frames)
    assert metrics["event"] == "metrics"
    assert metrics["id"].endswith(f":{seq}")
    assert checked(metrics["data"])["cursor"] == metrics["id"]


async def test_sse_sends_a_retry_hint(streams: httpx.AsyncClient) -> None:
    async with streams.stream("GET", "/stream/metrics") as response:
        with anyio.fail_after(5):
            first = await anext(response.aiter_lines())
    assert first == "retry: 3000"


async def test_last_event_id_resumes_exactly(
    http: httpx.AsyncClient, streams: httpx.AsyncClient
) -> None:
    async with streams.stream("GET", "/stream/metrics") as response:
        frames = events(response)
        with anyio.fail_after(5):
            await anext(frames)
            await push(http)
            last_id = (await anext(frames))["id"]
    missed = [await push(http, metrics={"total": 2 + i}) for i in range(12)]
    headers = {"Last-Event-ID": last_id}
    async with streams.stream("GET", "/stream/metrics", headers=headers) as response:
        frames = events(response)
        with anyio.fail_after(5):
            hello = checked((await anext(frames))["data"])
            got = [await anext(frames) for _ in missed]
    assert hello["resumed"] is True
    assert [int(f["id"].rsplit(":", 1)[1]) for f in got] == missed


async def test_bad_parameters_are_422(streams: httpx.AsyncClient) -> None:
    response = await streams.get("/stream/metrics", params={"colour": "red"})
    assert response.status_code == 422 and "colour" in response.json()["error"]


async def test_shutdown_ends_sse_streams_cleanly(tmp_path: Path) -> None:
    app = create_app(Settings(db=tmp_path / "s.duckdb"), Config(sources=[]))
    lines: list[str] = []
    with serve(app) as base:
        client = httpx.AsyncClient(base_url=base)
        response = await client.send(client.build_request("GET", "/stream/metrics"), stream=True)
        iterator = response.aiter_lines()
        with anyio.fail_after(5):
            while not any(line.startswith("event: connected") for line in lines):
                lines.append(await anext(iterator))
    # The server has stopped: the stream must have ended, not been cut mid-frame.
    with anyio.fail_after(5):
        lines.extend([line async for line in iterator])
    await response.aclose()
    await client.aclose()
    assert lines[-1] == ""


async def test_idle_stream_sends_keepalive_comments(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "k.duckdb", sse_keepalive_seconds=0.2)
    with serve(create_app(settings, Config(sources=[]))) as base:
        async with (
            httpx.AsyncClient(base_url=base) as http,
            http.stream("GET", "/stream/metrics") as response,
        ):
            comments = 0
            with anyio.fail_after(5):
                async for frame in sse_frames(response):
                    comments += frame.get("comment") == "keepalive"
                    if comments == 2:
                        break
    assert comments == 2
