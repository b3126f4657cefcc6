"""Catch-up admission: a bounded number of clients catch up at once (the rest are told to
come back, with a jittered hint), page reads take turns in arrival order, and whatever
the contention every resuming client still gets every batch once, in order."""

from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from stream.pages import KEEP_BYTES
from stream.replay import RETRY_SECONDS, ReplayGate, Ticket
from tests.helpers import serve
from tests.stream.conftest import push, recv_type

pytestmark = pytest.mark.anyio


async def test_page_reads_take_turns_first_come_first_served() -> None:
    gate = ReplayGate(reads=2, clients=10)
    order: list[int] = []
    at_once = peak = 0

    async def reader(i: int) -> None:
        nonlocal at_once, peak
        async with gate.read():
            order.append(i)
            at_once += 1
            peak = max(peak, at_once)
            await anyio.sleep(0.01)
            at_once -= 1

    async with anyio.create_task_group() as tasks:
        for i in range(8):
            tasks.start_soon(reader, i)
            await anyio.lowlevel.checkpoint()  # each asks in turn
    assert peak == 2 and order == list(range(8)) and gate.pages == 8


def test_clients_past_the_bound_are_told_when_to_come_back() -> None:
    gate = ReplayGate(reads=1, clients=2)
    first, second = gate.enter(), gate.enter()
    assert isinstance(first, Ticket) and isinstance(second, Ticket)
    hints = {gate.enter() for _ in range(50)}
    assert hints <= set(range(RETRY_SECONDS[0], RETRY_SECONDS[1] + 1)) and len(hints) > 1
    assert gate.refused == 50 and gate.replaying == 2
    first.leave()
    first.leave()  # idempotent
    assert gate.replaying == 1
    del second  # a stream that never started gives its place back when dropped
    assert gate.replaying == 0


async def test_a_full_catch_up_is_refused_with_1013_or_503_and_live_clients_still_join(
    tmp_path: Path,
) -> None:
    app = create_app(
        Settings(db=tmp_path / "r.duckdb", max_replaying_clients=0), Config(sources=[])
    )
    with serve(app) as base:
        ws_url = base.replace("http://", "ws://") + "/ws/metrics"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            for _ in range(3):
                await push(http)
            async with connect(f"{ws_url}?since=") as live:  # no cursor: live only
                assert (await recv_type(live, "connected"))["resumed"] is None
            connected_at_head = None
            async with connect(ws_url) as ws:
                connected_at_head = (await recv_type(ws, "connected"))["cursor"]
            async with connect(f"{ws_url}?since={connected_at_head}") as ws:  # nothing missed
                assert (await recv_type(ws, "connected"))["resumed"] is True
            epoch = connected_at_head.split(":")[0]
            async with connect(f"{ws_url}?since={epoch}:1") as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
            assert "catching up" in closed.value.rcvd.reason
            assert "retry after" in closed.value.rcvd.reason
            refused = await http.get("/stream/metrics", params={"since": f"{epoch}:1"})
            assert refused.status_code == 503 and "catching up" in refused.json()["error"]
            assert 1 <= int(refused.headers["retry-after"]) <= 5
            health = (await http.get("/health")).json()["streams"]
            assert health["catch_up_refused"] == 2 and health["catching_up"] == 0


async def test_resuming_clients_through_one_read_slot_each_get_every_batch_once(
    tmp_path: Path,
) -> None:
    settings = Settings(db=tmp_path / "s.duckdb", max_replay_reads=1, max_replaying_clients=50)
    with serve(create_app(settings, Config(sources=[]))) as base:
        ws_url = base.replace("http://", "ws://") + "/ws/metrics"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            seqs = [await push(http, metrics={"total": float(i)}) for i in range(40)]
            async with connect(ws_url) as ws:
                epoch = (await recv_type(ws, "connected"))["cursor"].split(":")[0]
            got: dict[int, list[int]] = {}

            async def resume(i: int) -> None:
                after = seqs[i % 20]
                async with connect(f"{ws_url}?since={epoch}:{after}") as ws:
                    await recv_type(ws, "connected")
                    seen = got.setdefault(i, [])
                    while not seen or seen[-1] != seqs[-1]:
                        seen.append((await recv_type(ws, "metrics", wait=30))["seq"])

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tasks:
                    for i in range(30):
                        tasks.start_soon(resume, i)
            health = (await http.get("/health")).json()["streams"]
        for i, seen in got.items():
            assert seen == [s for s in seqs if s > seqs[i % 20]]
        assert health["catching_up"] == 0 and health["catch_up_refused"] == 0
        # 30 clients' pages, served from fewer reads: clients nearby share them
        assert health["catch_up_pages_served"] >= 30
        assert 1 <= health["catch_up_pages"] < health["catch_up_pages_served"]
        assert 0 < health["catch_up_kept_bytes"] <= KEEP_BYTES
