"""A reconnect storm through `omnimetrics serve --demo` as the CLI runs it: 500 clients
(450 WebSocket, 50 SSE) connect at once with cursors 1-5,000 batches behind, with four
different filters, while pushes and the demo's ticks go on. Clients do what the contract
tells them: told to come back (1013, 503), they come back after the hint with their cursor.

Every client ends with every batch of its filter exactly once, in order (live messages
of a paced tenant hold several, and say how many); `/health`
answers within a second throughout; no collection tick is skipped.
"""

import asyncio
import random
import subprocess
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import duckdb
import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ingest.writer import Writer
from schemas.db import Database
from schemas.rows import SampleRow
from schemas.signals import AppendSignal
from tests.helpers import free_port, serve_demo, wait_for

pytestmark = pytest.mark.anyio

STORED = 5_200  # batches stored before the storm
BEHIND = 5_000  # the furthest a client resumes from
WS_CLIENTS, SSE_CLIENTS = 450, 50
FILTERS: list[dict[str, str]] = [{}, {"tenant_id": "acme"}, {"tenant_id": "local"},
                                 {"tool_id": "t"}]  # fmt: skip
HEALTH_WITHIN = 1.0
WATCH_HEALTH = """
import sys, time, httpx
while True:
    started = time.perf_counter()
    try:
        status = httpx.get(sys.argv[1], timeout=10).status_code
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    print(f"{time.perf_counter() - started:.4f} {status}", flush=True)
    time.sleep(0.2)
"""
T0 = datetime(2026, 11, 30, tzinfo=UTC)


async def _store(path: Path) -> list[int]:
    """STORED one-sample batches of two tenants, with and without a tool; their ends."""
    db = Database(path)
    writer = Writer(db, AppendSignal())
    await writer.start()
    for chunk in range(0, STORED, 400):
        await asyncio.gather(*(
            writer.append_events([(None, [SampleRow(
                T0 + timedelta(milliseconds=10 * i), ("acme", "local")[i % 2],
                ("t", None, None)[i % 3], None, "push", "total", "counter", float(i))])])
            for i in range(chunk, min(chunk + 400, STORED))
        ))  # fmt: skip
    await writer.close()
    ends = [e for (e,) in db.cursor().execute(
        "SELECT max(seq) FROM points GROUP BY batch ORDER BY 1").fetchall()]  # fmt: skip
    db.close()
    assert len(ends) == STORED
    return ends


@dataclass
class Server:
    base: str
    path: Path
    ends: list[int]  # of the batches stored before it started
    proc: subprocess.Popen[bytes]
    watcher: "subprocess.Popen[str] | None" = None

    def watch_health(self) -> "subprocess.Popen[str]":
        """/health timed from a process of its own (the test's is busy with 500 clients),
        each time on a new connection, so the listen queue is part of what is timed."""
        self.watcher = subprocess.Popen(
            [sys.executable, "-c", WATCH_HEALTH, f"{self.base}/health"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        return self.watcher

    def stop(self) -> None:
        if self.watcher is not None and self.watcher.poll() is None:
            self.watcher.kill()
            self.watcher.communicate()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    path = tmp_path / "storm.duckdb"
    ends = asyncio.run(_store(path))
    port = free_port()
    command, env = serve_demo(port, path)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            return httpx.get(f"{base}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    running = Server(base, path, ends, proc)
    try:
        wait_for(up, timeout=30, interval=0.1)
        yield running
    finally:
        running.stop()


Received = tuple[list[int], list[int]]  # each metrics message's seq, and its `coalesced`


def _key(flt: dict[str, str]) -> str:
    return orjson.dumps(flt).decode()


class Storm:
    def __init__(self, base: str, epoch: str) -> None:
        self.base = base
        self.epoch = epoch
        self.until: dict[str, int] = {}  # per filter: the last batch to wait for
        self.refused = 0
        self.resumed = 0

    def done(self, flt: dict[str, str], seqs: list[int]) -> bool:
        until = self.until.get(_key(flt))
        return until is not None and bool(seqs) and seqs[-1] >= until

    async def ws(self, after: int, flt: dict[str, str]) -> Received:
        seqs: list[int] = []
        merged: list[int] = []
        cursor = f"{self.epoch}:{after}"
        url = self.base.replace("http://", "ws://") + "/ws/metrics"
        while not self.done(flt, seqs):
            try:
                async with connect(f"{url}?{urlencode({**flt, 'since': cursor})}",
                                   max_size=None, compression=None) as ws:  # fmt: skip
                    while not self.done(flt, seqs):
                        try:
                            text = await asyncio.wait_for(ws.recv(), 0.5)
                        except TimeoutError:
                            continue
                        message = orjson.loads(text)
                        if message["type"] == "metrics":
                            seqs.append(message["seq"])
                            merged.append(message.get("coalesced", 1))
                            cursor = message["cursor"]
            except ConnectionClosed as exc:
                await self._closed(exc)
        return seqs, merged

    async def _closed(self, exc: ConnectionClosed) -> None:
        code = exc.rcvd.code if exc.rcvd is not None else None
        reason = exc.rcvd.reason if exc.rcvd is not None else ""
        if code == 1013:  # "retry after N s"
            self.refused += 1
            await asyncio.sleep(float(reason.rsplit("after ", 1)[1].split()[0]))
        elif code == 4008:  # too slow: resume from the cursor at once
            self.resumed += 1
        else:
            raise AssertionError(f"closed {code}: {reason}") from exc

    async def sse(self, after: int, flt: dict[str, str], http: httpx.AsyncClient) -> Received:
        seqs: list[int] = []
        merged: list[int] = []
        cursor = f"{self.epoch}:{after}"
        while not self.done(flt, seqs):
            params = {**flt, "since": cursor}
            async with http.stream("GET", "/stream/metrics", params=params) as response:
                if response.status_code == 503:
                    self.refused += 1
                    await asyncio.sleep(float(response.headers["retry-after"]))
                    continue
                assert response.status_code == 200, await response.aread()
                event = ""
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "metrics":
                        message = orjson.loads(line[6:])
                        seqs.append(message["seq"])
                        merged.append(message.get("coalesced", 1))
                        cursor = message["cursor"]
                    elif line == "" and self.done(flt, seqs):
                        break
                else:
                    self.resumed += 1  # the stream ended (a gap): resume from the cursor
        return seqs, merged


async def _push(http: httpx.AsyncClient, tenant: str, tool: str | None, value: float) -> int:
    body: dict[str, Any] = {"source": "push", "kind": "counter", "metrics": {"total": value},
                            "tenant_id": tenant, "tool_id": tool}  # fmt: skip
    response = await http.post("/ingest", json=body)
    assert response.status_code == 202, response.text
    seq: int = response.json()["seq"]
    return seq


async def test_a_reconnect_storm_gets_every_batch_once_in_order_and_health_keeps_answering(
    server: Server,
) -> None:
    base, ends = server.base, server.ends
    rng = random.Random(7)
    async with connect(base.replace("http://", "ws://") + "/ws/metrics") as ws:
        epoch = orjson.loads(await ws.recv())["cursor"].split(":")[0]
    storm = Storm(base, epoch)
    clients = [(ends[-rng.randint(1, BEHIND)], FILTERS[i % len(FILTERS)])
               for i in range(WS_CLIENTS + SSE_CLIENTS)]  # fmt: skip
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=SSE_CLIENTS + 10)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:

        async def pusher() -> None:
            i = 0
            while not stop.is_set():
                await _push(http, ("acme", "local")[i % 2], ("t", None)[i % 2], float(i))
                i += 1
                await asyncio.sleep(0.1)

        watcher = server.watch_health()
        background = [asyncio.create_task(pusher())]
        tasks = [asyncio.create_task(storm.ws(after, flt)) for after, flt in clients[:WS_CLIENTS]]
        tasks += [asyncio.create_task(storm.sse(after, flt, http))
                  for after, flt in clients[WS_CLIENTS:]]  # fmt: skip

        async def everyone_live() -> None:
            while True:
                streams = (await http.get("/health")).json()["streams"]
                if streams["clients"] >= len(clients) and streams["catching_up"] == 0:
                    return
                await asyncio.sleep(0.5)

        await asyncio.wait_for(everyone_live(), 120)
        await asyncio.sleep(2)  # live for a while, with pushes and ticks
        stop.set()
        for task in background:
            await task
        watcher.terminate()
        health = [line.split() for line in watcher.communicate()[0].splitlines()]
        # The last batch of each filter: one push a tenant, both with the tool.
        last_acme = await _push(http, "acme", "t", 0.0)
        last_local = await _push(http, "local", "t", 0.0)
        storm.until = {_key({}): last_local, _key({"tenant_id": "acme"}): last_acme,
                       _key({"tenant_id": "local"}): last_local,
                       _key({"tool_id": "t"}): last_local}  # fmt: skip
        got = await asyncio.wait_for(asyncio.gather(*tasks), 120)
        collection = (await http.get("/health")).json()["collection"]
    assert sum(c["ticks_skipped"] for c in collection.values()) == 0, collection
    assert collection["local"]["ticks_run"] >= 3
    assert len(health) > 10 and {status for _, status in health} == {"200"}, health
    assert max(float(seconds) for seconds, _ in health) < HEALTH_WITHIN, health

    server.stop()
    con = duckdb.connect(str(server.path), read_only=True)
    for (after, flt), (seqs, merged) in zip(clients, got, strict=True):
        # Up to the message holding the filter's last batch (a paced one may hold more).
        upto = bisect_left(seqs, storm.until[_key(flt)]) + 1
        seqs, merged = seqs[:upto], merged[:upto]
        where = " AND ".join(f"k.{column} = '{value}'" for column, value in flt.items()) or "true"
        batches = [e for (e,) in con.execute(
            f"SELECT max(p.seq) FROM points p JOIN series_keys k ON k.id = p.series_id "
            f"GROUP BY p.batch HAVING bool_or({where}) ORDER BY 1").fetchall()
            if after < e <= seqs[-1]]  # fmt: skip
        # Live messages of a paced tenant merge batches (`coalesced` says how many): each
        # message ends on a batch of the filter and holds every one since the one before.
        assert seqs == sorted(set(seqs)) and set(seqs) <= set(batches), (after, flt)
        held = [bisect_right(batches, s) for s in seqs]
        assert merged == [b - a for a, b in zip([0, *held], held, strict=False)], (after, flt)
    con.close()
