"""A client that stops reading must not slow the others, nor grow the server's memory,
and must lose nothing once it resumes."""

import statistics
import time
from pathlib import Path

import anyio
import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from schemas.tenants import SettingsUpdate
from tests.helpers import StalledWebSocket, serve
from tests.stream.conftest import recv_type

pytestmark = pytest.mark.anyio

READERS = 50
BUDGET = 1024 * 1024  # the default per-client queue
BATCHES = 400  # ~2 MB: past a stalled socket's kernel buffer (512 KiB) and its queue
METRICS = {f"metrics.measurement_{i:04d}": 1000.5 + i for i in range(250)}  # ~5 KB
PACE = 0.005  # seconds between pushes: 200 batches/s, far above any real tick rate


async def read_all(ws: ClientConnection, received: list[tuple[int, float]], n: int) -> None:
    while len(received) < n:
        message = orjson.loads(await ws.recv())
        if message["type"] == "metrics":
            received.append((message["seq"], time.perf_counter()))


async def push_all(
    http: httpx.AsyncClient, pushed: dict[int, float], health: list[dict[str, int]]
) -> None:
    for i in range(BATCHES):
        started = time.perf_counter()
        body = {"source": "bulk", "kind": "gauge", "metrics": {**METRICS, "i": i}}
        response = await http.post("/ingest", json=body)
        pushed[response.json()["seq"]] = started
        await anyio.sleep(PACE)
        if i % 25 == 0:
            health.append((await http.get("/health")).json()["streams"])


async def run_phase(
    http: httpx.AsyncClient, readers: list[ClientConnection], health: list[dict[str, int]]
) -> tuple[list[int], list[float]]:
    """Push BATCHES batches; every reader must get each one. Returns seqs and latencies."""
    pushed: dict[int, float] = {}
    received: list[list[tuple[int, float]]] = [[] for _ in readers]
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tasks:  # ends when every reader has all
            for ws, got in zip(readers, received, strict=True):
                tasks.start_soon(read_all, ws, got, BATCHES)
            await push_all(http, pushed, health)
    seqs = list(pushed)
    latencies = []
    for got in received:
        assert [seq for seq, _ in got] == seqs, "a reader missed, repeated or reordered a batch"
        latencies += [at - pushed[seq] for seq, at in got]
    return seqs, latencies


async def test_stalled_client_slows_no_one_and_loses_nothing(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "slow.duckdb", stream_queue_bytes=BUDGET)
    # Every batch on its own: a cap far above the push rate (the default coalesces).
    unpaced = {"local": SettingsUpdate(max_events_per_minute=1_000_000)}
    app = create_app(settings, Config(sources=[], tenants=unpaced))
    with serve(app) as base:
        ws_url = base.replace("http", "ws") + "/ws/metrics"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            readers = [await connect(ws_url) for _ in range(READERS)]
            for ws in readers:
                await recv_type(ws, "connected")
            health: list[dict[str, int]] = []
            _, baseline = await run_phase(http, readers, health)

            host, port = base.removeprefix("http://").split(":")
            stalled = StalledWebSocket(host, int(port), "/ws/metrics")
            seqs, with_stall = await run_phase(http, readers, health)
            after = (await http.get("/health")).json()["streams"]
            messages, close = await anyio.to_thread.run_sync(stalled.drain)

            got = [orjson.loads(m) for m in messages]
            got_seqs = [m["seq"] for m in got if m["type"] == "metrics"]
            cursor = got[-1]["cursor"] if got_seqs else got[0]["cursor"]
            async with connect(f"{ws_url}?since={cursor}") as resumed:
                assert (await recv_type(resumed, "connected"))["resumed"] is True
                while len(got_seqs) < len(seqs):
                    got_seqs.append((await recv_type(resumed, "metrics"))["seq"])
            for ws in readers:
                await ws.close()

    p50_base, p50_stall = statistics.median(baseline), statistics.median(with_stall)
    # Within 2x of the run without the stalled client; 5 ms absorbs timer and scheduler
    # noise when both medians are a few milliseconds on a shared 2-core machine.
    assert p50_stall <= 2 * p50_base + 0.005, (p50_base, p50_stall)
    # The stalled client was dropped, not waited for, and memory stayed within budget.
    assert after["clients"] == READERS
    assert max(h["queued_bytes"] for h in health) <= (READERS + 1) * BUDGET
    assert close is None or close[0] == 4008
    # Resumed from its cursor, it has every batch exactly once, in order.
    assert got_seqs == seqs
