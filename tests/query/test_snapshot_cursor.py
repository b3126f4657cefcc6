"""The REST answers carry the stream cursor of their snapshot: a stream resumed from it
extends the answer with no gap and no duplicate."""

from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from tests.helpers import serve
from tests.stream.conftest import recv_type

pytestmark = pytest.mark.anyio


async def test_resuming_from_the_answer_cursor_brings_exactly_what_came_after(
    tmp_path: Path,
) -> None:
    with serve(create_app(Settings(db=tmp_path / "c.duckdb"), Config(sources=[]))) as base:
        async with httpx.AsyncClient(base_url=base) as http:

            async def push(value: int) -> int:
                body = {"source": "s", "kind": "counter", "metrics": {"m": value}}
                seq: int = (await http.post("/ingest", json=body)).json()["seq"]
                return seq

            before = [await push(v) for v in (1, 3, 6)]
            increase = await http.get("/api/v1/increase", params={"metric": "m"})
            latest = await http.get("/api/v1/latest", params={"format": "csv"})
            cursor = increase.headers["x-omnimetrics-cursor"]
            assert increase.json()["total"] == 5
            assert cursor.endswith(f":{before[-1]}")
            assert latest.headers["x-omnimetrics-cursor"] == cursor
            after = [await push(v) for v in (10, 11)]
            ws_url = base.replace("http://", "ws://") + f"/ws/metrics?since={cursor}"
            async with connect(ws_url) as ws:
                assert (await recv_type(ws, "connected"))["resumed"] is True
                got = [await recv_type(ws, "metrics") for _ in after]
    assert [m["seq"] for m in got] == after
    assert sum(m["deltas"]["s"]["m"] for m in got) == 5  # 6 → 10 → 11
