"""Streams against scraped sources: errors reach who can see them, and watching costs
the upstreams nothing."""

from pathlib import Path

import anyio
import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings, SourceConfig
from tests.helpers import Reply, Upstream, serve
from tests.stream.conftest import recv, recv_type

pytestmark = pytest.mark.anyio


async def test_failed_scrape_is_an_error_message_to_clients_that_see_the_source(
    tmp_path: Path, upstream: Upstream
) -> None:
    url = upstream.script("/stats", Reply(503, b"busy"))
    config = Config(sources=[SourceConfig(name="compression", url=url, tool_id="claude-code")])
    with serve(create_app(Settings(db=tmp_path / "e.duckdb"), config)) as base:
        ws_url = base.replace("http", "ws") + "/ws/metrics"
        async with (
            connect(ws_url + "?tool_id=claude-code") as sees,
            connect(ws_url + "?tenant_id=acme") as other_tenant,
            connect(ws_url + "?tool_id=cursor") as other_tool,
        ):
            for ws in (sees, other_tenant, other_tool):
                await recv_type(ws, "connected")
            error = await recv_type(sees, "error")
            metrics = await recv_type(sees, "metrics")
            for ws in (other_tenant, other_tool):
                with pytest.raises(TimeoutError):
                    await recv(ws, wait=1.5)
    assert error["error"] == "compression: HTTP 503 Service Unavailable"
    assert error["source"] == "compression"
    assert metrics["data"]["compression"]["status"] == "down"


async def drain(ws: ClientConnection) -> None:
    async for _ in ws:
        pass


async def test_upstream_requests_per_tick_do_not_depend_on_clients(
    tmp_path: Path, upstream: Upstream
) -> None:
    url = upstream.script("/stats", Reply(body=orjson.dumps({"metrics": {"total": 1}})))
    config = Config(sources=[SourceConfig(name="compression", url=url)])
    with serve(create_app(Settings(db=tmp_path / "load.duckdb"), config)) as base:
        async with httpx.AsyncClient(base_url=base) as http:

            async def ticks() -> int:
                response = await http.get(
                    "/api/v1/series", params={"metric": "up", "limit": 100_000}
                )
                return len(response.json()["samples"])

            async def per_tick(seconds: float) -> tuple[int, int]:
                ticks0, requests0 = await ticks(), upstream.requests["/stats"]
                await anyio.sleep(seconds)
                return await ticks() - ticks0, upstream.requests["/stats"] - requests0

            idle = await per_tick(3)
            clients = [
                await connect(base.replace("http", "ws") + "/ws/metrics") for _ in range(500)
            ]
            async with anyio.create_task_group() as readers:
                for ws in clients:
                    readers.start_soon(drain, ws)
                watched = await per_tick(3)
                assert (await http.get("/health")).json()["streams"]["clients"] == 500
                for ws in clients:
                    await ws.close()
    assert idle[0] >= 2 and watched[0] >= 2
    # One request per source per tick, whether 0 or 500 clients watch (±1 for a tick
    # in flight at either edge of the window).
    assert abs(idle[1] - idle[0]) <= 1 and abs(watched[1] - watched[0]) <= 1
