"""Stream gateways (CONTRACT.md "Gateways"): the writer, a real redis-server and gateways in
front, each test against the real processes. Every client gets every batch of its filter
once and in order, across a Redis restart that loses everything, a stopped writer, and
gateway workers killed with SIGKILL; a cursor from one gateway resumes on another from
before the Redis stream's first entry; settings reach the gateways within a second."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from redis import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from omnimetrics.app import create_app
from omnimetrics.gateway import create_gateway
from omnimetrics.settings import Config, Settings
from schemas.auth import issue
from schemas.tenants import MAX_EVENTS_PER_MINUTE
from tests.helpers import RedisServer, free_port, serve, wait_for
from tests.stream.conftest import recv_type

pytestmark = pytest.mark.anyio
SECRET = "a-gateway-test-secret-of-32-chars-or-more"
KINDS = [("local", "a"), ("acme", "b"), ("acme", "a"), ("local", "b")]


def ws_of(base: str) -> str:
    return base.replace("http://", "ws://")


class Watcher:
    """A client that stays subscribed: on any close it resumes from its last cursor."""

    def __init__(self, url: str, query: str = "") -> None:
        self.url, self.query = url, query
        self.seqs: list[int] = []
        self.cursor: str | None = None
        self.started: int | None = None  # the seq its first `connected` said it starts after
        self.reconnects = 0

    async def run(self) -> None:
        while True:
            since = f"&since={self.cursor}" if self.cursor else ""
            try:
                async with connect(f"{ws_of(self.url)}/ws/metrics?{self.query}{since}") as ws:
                    hello = orjson.loads(await ws.recv())
                    if self.cursor is None:
                        self.cursor = hello["cursor"]
                        self.started = int(hello["cursor"].rpartition(":")[2])
                    async for text in ws:
                        message = orjson.loads(text)
                        if message["type"] == "metrics":
                            self.seqs.append(message["seq"])
                            self.cursor = message["cursor"]
            except (ConnectionClosed, OSError, InvalidStatus):
                pass
            self.reconnects += 1
            await asyncio.sleep(0.1)

    def wants(self, tenant: str, tool: str) -> bool:
        asked = dict(p.split("=") for p in self.query.split("&") if p)
        return asked.get("tenant_id", tenant) == tenant and asked.get("tool_id", tool) == tool


class Pusher:
    def __init__(self) -> None:
        self.pushed: list[tuple[int, str, str]] = []  # seq, tenant, tool

    async def push(self, base: str, count: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            for _ in range(count):
                tenant, tool = KINDS[len(self.pushed) % len(KINDS)]
                body = {"source": "s", "kind": "counter", "tenant_id": tenant, "tool_id": tool,
                        "metrics": {"n": len(self.pushed)}}  # fmt: skip
                response = await http.post("/ingest", json=body)
                assert response.status_code == 202, response.text
                self.pushed.append((response.json()["seq"], tenant, tool))

    def expected(self, watcher: Watcher) -> list[int]:
        assert watcher.started is not None
        return [s for s, tenant, tool in self.pushed
                if s > watcher.started and watcher.wants(tenant, tool)]  # fmt: skip


async def settled(pusher: Pusher, watchers: list[Watcher], seconds: float = 30) -> None:
    """Wait until each watcher has its last expected batch; then each has exactly those."""
    with anyio.fail_after(seconds):
        for watcher in watchers:
            want = pusher.expected(watcher)
            while want and (not watcher.seqs or watcher.seqs[-1] < want[-1]):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    for watcher in watchers:
        assert watcher.seqs == pusher.expected(watcher), watcher.query


async def connected(watchers: list[Watcher]) -> None:
    with anyio.fail_after(10):
        while any(w.cursor is None for w in watchers):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@contextlib.contextmanager
def writer(db: Path, redis: RedisServer, port: int, **options: Any) -> Iterator[str]:
    """The writer, publishing to `redis` (its stream trimmed to ~5 entries), its tenants'
    streams unpaced (each client gets every batch as its own message)."""
    settings = Settings(db=db, redis_url=redis.url, redis_maxlen=5, **options)
    with serve(create_app(settings, Config(sources=[])), port=port) as base:
        for tenant in ("local", "acme"):
            headers = {}
            if "jwt_secret" in options:
                credential = issue(SECRET, tenant, ["admin"], int(time.time()) + 600)
                headers = {"Authorization": f"Bearer {credential}"}
            response = httpx.put(f"{base}/settings", params={"tenant_id": tenant},
                                 json={"max_events_per_minute": MAX_EVENTS_PER_MINUTE},
                                 headers=headers)  # fmt: skip
            assert response.status_code == 200, response.text
        yield base


def gateway(redis: RedisServer, base: str, **options: Any) -> Any:
    return serve(create_gateway(Settings(redis_url=redis.url, writer_url=base, **options)))


def health(base: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{base}/health", timeout=5).json()
    return body


@contextlib.asynccontextmanager
async def watching(watchers: list[Watcher]) -> Any:
    async with anyio.create_task_group() as tasks:
        for watcher in watchers:
            tasks.start_soon(watcher.run)
        await connected(watchers)
        yield
        tasks.cancel_scope.cancel()


async def test_clients_on_two_gateways_get_their_batches_once_across_redis_and_writer_faults(
    tmp_path: Path,
) -> None:
    db, port, pusher = tmp_path / "w.duckdb", free_port(), Pusher()
    with RedisServer(tmp_path, **{"stream-node-max-entries": "2"}) as redis:
        writing = contextlib.ExitStack()
        base = writing.enter_context(writer(db, redis, port))
        await pusher.push(base, 1)
        with gateway(redis, base) as a, gateway(redis, base) as b:
            watchers = [Watcher(a, "tool_id=a"), Watcher(a), Watcher(b, "tenant_id=acme"),
                        Watcher(b, "tool_id=b"),
                        Watcher(b, "tenant_id=local&tool_id=a")]  # fmt: skip
            async with watching(watchers):
                await pusher.push(base, 20)
                await settled(pusher, watchers)

                # Redis restarts empty: the writer republishes its last 5 batches, the
                # gateways take what lies between from the writer.
                redis.stop()
                await pusher.push(base, 10)
                redis.start()
                await pusher.push(base, 10)
                await settled(pusher, watchers)
                assert health(a)["gateway"]["filled_from_writer"] > 0

                # The writer stops: the gateways keep their clients and say so.
                writing.close()
                says = wait_for(lambda: [r for r in health(a)["reasons"] if "writer" in r], 10)
                assert "has not been heard from" in says[0]
                wait_for(lambda: health(b)["status"] == "degraded", 5)
                with writer(db, redis, port) as base:
                    await pusher.push(base, 10)
                    await settled(pusher, watchers)
                    wait_for(lambda: health(a)["status"] == "healthy", 10)
                    assert [w.reconnects for w in watchers] == [0] * len(watchers)


async def test_a_stalled_gateway_slows_neither_the_writer_nor_another_gateway(
    tmp_path: Path,
) -> None:
    db, pusher, loops = tmp_path / "w.duckdb", Pusher(), []
    with RedisServer(tmp_path) as redis, writer(db, redis, free_port()) as base:
        stalled = create_gateway(Settings(redis_url=redis.url, writer_url=base))
        with serve(stalled, loops=loops) as a, gateway(redis, base) as b:
            watchers = [Watcher(a), Watcher(b)]
            async with watching(watchers):
                await pusher.push(base, 3)
                await settled(pusher, watchers)
                # Gateway A's event loop is held for 5 s (a process that stops, a long GC).
                loops[0].call_soon_threadsafe(time.sleep, 5)
                await asyncio.sleep(0.1)
                started = time.monotonic()
                await pusher.push(base, 10)
                pushing = time.monotonic() - started
                await settled(pusher, [watchers[1]])
                took = time.monotonic() - started
                assert pushing < 3 and took < 4, (pushing, took)  # inside A's stall
                assert len(watchers[0].seqs) == 3
                await settled(pusher, watchers)  # A catches up once it runs again


async def test_a_cursor_from_one_gateway_resumes_on_another_from_before_the_streams_start(
    tmp_path: Path,
) -> None:
    db, pusher = tmp_path / "w.duckdb", Pusher()
    with RedisServer(tmp_path, **{"stream-node-max-entries": "2"}) as redis:
        with writer(db, redis, free_port()) as base, gateway(redis, base) as a:
            await pusher.push(base, 3)
            async with connect(f"{ws_of(a)}/ws/metrics?since={await _cursor(a, 0)}") as ws:
                await recv_type(ws, "connected")
                got = [(await recv_type(ws, "metrics"))["seq"] for _ in range(3)]
            assert got == [s for s, _, _ in pusher.pushed]
            cursor = await _cursor(a, got[1])
            await pusher.push(base, 30)
            first = Redis.from_url(redis.url).xrange("omnimetrics:batches", count=1)[0][0]
            assert int(first.split(b"-")[0]) > got[1] + 1  # the cursor is older than the stream
            with gateway(redis, base) as b:
                async with connect(f"{ws_of(b)}/ws/metrics?since={cursor}") as ws:
                    assert (await recv_type(ws, "connected"))["resumed"] is True
                    missed = [s for s, _, _ in pusher.pushed if s > got[1]]
                    replayed = [(await recv_type(ws, "metrics"))["seq"] for _ in missed]
                    await pusher.push(base, 1)
                    live = (await recv_type(ws, "metrics"))["seq"]
                assert replayed == missed and live == pusher.pushed[-1][0]
                assert health(b)["gateway"]["catch_up_fetches"] >= 1


async def _cursor(base: str, seq: int) -> str:
    async with connect(f"{ws_of(base)}/ws/metrics") as ws:
        epoch = (await recv_type(ws, "connected"))["cursor"].split(":")[0]
    return f"{epoch}:{seq}"


async def test_settings_reach_the_gateways_within_a_second(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis:
        with writer(tmp_path / "w.duckdb", redis, free_port()) as base, gateway(redis, base) as a:
            async with connect(f"{ws_of(a)}/ws/metrics?tenant_id=acme") as ws:
                await recv_type(ws, "connected")
                changed = time.monotonic()
                async with httpx.AsyncClient(base_url=base) as http:
                    response = await http.put("/settings", params={"tenant_id": "acme"},
                                              json={"metrics_streaming": False})  # fmt: skip
                assert response.status_code == 200, response.text
                with pytest.raises(ConnectionClosed) as closed:
                    with anyio.fail_after(5):
                        await ws.recv()
                took = time.monotonic() - changed
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            assert "disabled" in closed.value.rcvd.reason and took < 1.0, took
            async with connect(
                f"{ws_of(a)}/ws/metrics?tenant_id=acme"
            ) as ws:  # refused from now on
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
            async with connect(
                f"{ws_of(a)}/ws/metrics?tenant_id=globex"
            ) as ws:  # others unaffected
                await recv_type(ws, "connected")


async def test_with_auth_a_gateway_checks_credentials_and_catches_up_with_its_own(
    tmp_path: Path,
) -> None:
    def token(tenant: str, *scopes: str) -> str:
        return issue(SECRET, tenant, list(scopes) or ["read"], int(time.time()) + 600)

    pusher = Pusher()
    with RedisServer(tmp_path, **{"stream-node-max-entries": "2"}) as redis:
        secured = {"jwt_secret": SECRET}
        with writer(tmp_path / "w.duckdb", redis, free_port(), **secured) as base:
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                for i in range(40):
                    tenant, tool = KINDS[i % len(KINDS)]
                    body = {"source": "s", "kind": "counter", "tool_id": tool, "metrics": {"n": i}}
                    headers = {"Authorization": f"Bearer {token(tenant, 'write')}"}
                    response = await http.post("/ingest", json=body, headers=headers)
                    pusher.pushed.append((response.json()["seq"], tenant, tool))
            with gateway(redis, base, **secured) as a:
                epoch = await _epoch(a, token("acme"))
                async with connect(f"{ws_of(a)}/ws/metrics") as ws:  # no credential
                    with pytest.raises(ConnectionClosed) as closed:
                        await ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
                url = f"{ws_of(a)}/ws/metrics?since={epoch}:0&token={token('acme')}"
                async with connect(url) as ws:
                    assert (await recv_type(ws, "connected"))["resumed"] is True
                    mine = [s for s, tenant, _ in pusher.pushed if tenant == "acme"]
                    got = [(await recv_type(ws, "metrics"))["seq"] for _ in mine]
                assert got == mine  # from the writer (the stream holds ~5), acme's only
                other = f"{ws_of(a)}/ws/metrics?tenant_id=local&token={token('acme')}"
                async with connect(other) as ws:
                    with pytest.raises(ConnectionClosed) as closed:
                        await ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def _epoch(base: str, credential: str) -> str:
    async with connect(f"{ws_of(base)}/ws/metrics?token={credential}") as ws:
        return str((await recv_type(ws, "connected"))["cursor"].split(":")[0])


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return [int(p) for p in listing.read().split()]


async def test_killed_gateway_workers_are_replaced_and_their_clients_resume_exactly(
    tmp_path: Path,
) -> None:
    pusher, port = Pusher(), free_port()
    with RedisServer(tmp_path, **{"stream-node-max-entries": "2"}) as redis:
        with writer(tmp_path / "w.duckdb", redis, free_port()) as base:
            await pusher.push(base, 1)
            supervisor = _supervisor(redis.url, base, port)
            try:
                url = f"http://127.0.0.1:{port}"
                wait_for(lambda: len(_children(supervisor.pid)) == 2, 20)
                wait_for(lambda: _answers(url), 20)
                workers = _children(supervisor.pid)
                watchers = [Watcher(url, q) for q in ("", "tool_id=a", "tenant_id=acme") * 3]
                async with watching(watchers):
                    await pusher.push(base, 10)
                    for pid in workers:  # every client's worker dies once, at least
                        await settled(pusher, watchers)
                        os.kill(pid, signal.SIGKILL)
                        await pusher.push(base, 10)
                        wait_for(lambda p=pid: _replaced(supervisor.pid, p), 20)
                    await pusher.push(base, 10)
                    await settled(pusher, watchers)
                assert all(w.reconnects >= 1 for w in watchers)
                workers = _children(supervisor.pid)
                supervisor.send_signal(signal.SIGTERM)  # passed on: the workers stop too
                assert supervisor.wait(timeout=20) == 0
                assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # noqa: ASYNC240
            finally:
                if supervisor.poll() is None:
                    supervisor.kill()
                    supervisor.wait()


def _supervisor(redis_url: str, writer_url: str, port: int) -> "subprocess.Popen[bytes]":
    """`omnimetrics gateway --workers 2`, as a user runs it."""
    command = [sys.executable, "-m", "omnimetrics.cli", "gateway", "--redis-url", redis_url,
               "--writer-url", writer_url, "--port", str(port), "--workers", "2"]  # fmt: skip
    return subprocess.Popen(command, env={**os.environ, "OMNIMETRICS_LOG_LEVEL": "warning"})


def _replaced(supervisor: int, pid: int) -> bool:
    children = _children(supervisor)
    return len(children) == 2 and pid not in children


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
