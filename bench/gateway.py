"""[W2 4/5]: stream gateways on Redis Streams, as the CLI runs them (a real redis-server,
`omnimetrics serve --redis-url`, `omnimetrics gateway`), each figure beside its same-run
single-process one.

- Catch-up: one client resuming from before the first of 100,000 small batches on a gateway
  (every page from the writer's `/api/v1/batches`), beside the same client on the writer
  itself (target: <= 2 s).
- Fan-out: 1,000 WS clients over `--workers 2`, a ~1 KB batch a second: each worker's
  server fan-out (target <= 10 ms) and commit-to-receive p99 (target <= 25 ms), beside
  `serve` alone with the same clients and the single-thread floor of writing the same
  bytes to 1,000 sockets.
- A crowd: 10,000 idle + 1,000 active clients over `--workers 2`: commit-to-receive p99
  (target <= 100 ms), the workers' RSS per idle connection (target <= 25 KiB), and Redis's
  CPU and memory per batch.
"""

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from redis import Redis

from bench import write_floor
from bench.catchup import SMALL, _receive, _wait_quiet, store_small
from bench.scrape import cpu_seconds
from bench.stream import (
    BATCHES,
    CLIENT_PROCESSES,
    FILLER_1KB,
    LATENCY_CLIENTS,
    arrivals,
    client_pool,
    clients,
    commit_times,
    fmt,
    free_port,
    process,
    push_ours,
    rss_kib,
    summarize,
    wait_http,
)
from tests.helpers import RedisServer


@contextlib.contextmanager
def writer(tmp: Path, db: Path, redis: RedisServer, commits: Path | None = None) -> Iterator[str]:
    """`omnimetrics serve --redis-url` (unpaced streams); with `commits`, its commit times."""
    port = free_port()
    config = tmp / f"writer-{port}.toml"
    config.write_text("sources = []\n[tenants.local]\nmax_events_per_minute = 1000000\n")
    command = ["-m", "omnimetrics.cli"]
    if commits is not None:
        command = ["-m", "bench.serve_timed", "--commits-out", str(commits)]
    with process(*command, "serve", "--port", str(port), "--db", str(db), "--config",
                 str(config), "--redis-url", redis.url) as proc:  # fmt: skip
        wait_http(f"http://127.0.0.1:{port}/health")
        _wait_quiet(proc.pid)
        yield f"127.0.0.1:{port}"


@contextlib.contextmanager
def gateway(redis: RedisServer, writer_addr: str, workers: int) -> Iterator[str]:
    with gateway_pids(redis, writer_addr, workers) as (addr, _):
        yield addr


@contextlib.contextmanager
def gateway_pids(
    redis: RedisServer, writer_addr: str, workers: int
) -> Iterator[tuple[str, list[int]]]:
    """A gateway, its address and its serving processes (the workers, or itself)."""
    port = free_port()
    with process("-m", "omnimetrics.cli", "gateway", "--redis-url", redis.url, "--writer-url",
                 f"http://{writer_addr}", "--port", str(port),
                 "--workers", str(workers)) as proc:  # fmt: skip
        wait_http(f"http://127.0.0.1:{port}/health")
        pids = [proc.pid]
        if workers > 1:
            listing = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            pids = [int(p) for p in listing.read_text().split()]
        yield f"127.0.0.1:{port}", pids


def catch_up(tmp: Path, redis: RedisServer) -> None:
    db = tmp / "small.duckdb"
    last = asyncio.run(store_small(db, SMALL))[-1]
    with writer(tmp, db, redis) as addr:
        direct = asyncio.run(_receive(f"ws://{addr}/ws/metrics", last))
        with gateway(redis, addr, 1) as gw:
            through = asyncio.run(_receive(f"ws://{gw}/ws/metrics", last))
            fetched = httpx.get(f"http://{gw}/health").json()["gateway"]["catch_up_fetches"]
    print(f"gateway catch-up: one client resuming from before {SMALL:,} small batches")
    print(f"  on a gateway (pages from the writer's /api/v1/batches, {fetched} fetches): "
          f"{through[1]:,} messages in {through[0]:.2f} s (target <= 2 s)")  # fmt: skip
    print(f"  on the writer itself (from DuckDB), same run: {direct[1]:,} messages in "
          f"{direct[0]:.2f} s; ratio gateway/writer {through[0] / direct[0]:.2f}")  # fmt: skip


def _worker_health(addr: str, workers: int) -> dict[int, dict[str, Any]]:
    """Each worker's `/health` streams section (a new connection lands on any of them)."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(200):
        body = httpx.get(f"http://{addr}/health", headers={"Connection": "close"}).json()
        seen[body["gateway"]["pid"]] = body["streams"]
        if len(seen) == workers:
            break
    return seen


class Run(NamedTuple):
    arrived: dict[int, list[float]]
    streams: dict[int, dict[str, Any]]  # each serving process's `/health` streams section


def _latency(addr: str, streams_at: str, workers: int) -> Run:
    """The latency clients on `streams_at`, batches pushed to the writer at `addr`."""
    sent: dict[int, float] = {}
    with client_pool(f"ws://{streams_at}/ws/metrics", LATENCY_CLIENTS) as readers:
        time.sleep(1)  # every client connected and idle
        with httpx.Client(base_url=f"http://{addr}") as http:
            for _ in range(BATCHES):
                seq, at = push_ours(http, FILLER_1KB)
                sent[seq] = at
                time.sleep(1)
            if workers:
                streams = _worker_health(streams_at, workers)
            else:
                streams = {0: http.get("/health").json()["streams"]}
        return Run(arrivals(readers), streams)


def fan_out(tmp: Path, redis: RedisServer) -> None:
    print(f"gateway fan-out: {LATENCY_CLIENTS:,} WS clients in {CLIENT_PROCESSES} processes, "
          f"1 batch/s of ~1 KB, {BATCHES} batches")  # fmt: skip
    for label, workers in (("serve alone", 0), ("2 gateway workers", 2)):
        commits = tmp / f"commits-{workers}.json"
        with writer(tmp, tmp / f"fan-{workers}.duckdb", redis, commits) as addr:
            if workers:
                with gateway(redis, addr, workers) as gw:
                    run = _latency(addr, gw, workers)
            else:
                run = _latency(addr, addr, workers)
        c = summarize(run.arrived, commit_times(commits), BATCHES, LATENCY_CLIENTS)
        fanouts = ", ".join(f"{s['fanout_ms']['p50']:.1f} p50 / {s['fanout_ms']['max']:.1f} max"
                            for s in run.streams.values())  # fmt: skip
        print(f"  {label}: commit-to-receive {fmt(c)}")
        print(f"    server fan-out per process (dispatch to the last client's send, ms): {fanouts}")
    floor = write_floor.median_ms(LATENCY_CLIENTS, CLIENT_PROCESSES)
    print(f"  floor: one thread writing the same 1 KB to {LATENCY_CLIENTS:,} loopback sockets: "
          f"{floor:.1f} ms")  # fmt: skip
    print("  targets (2 workers): server fan-out <= 10 ms, commit-to-receive p99 <= 25 ms")


IDLE = 10_000


def crowd(tmp: Path, redis: RedisServer) -> None:
    assert redis.process is not None
    commits = tmp / "commits-crowd.json"
    with writer(tmp, tmp / "crowd.duckdb", redis, commits) as addr:
        with gateway_pids(redis, addr, 2) as (gw, pids):
            time.sleep(1)
            before = sum(rss_kib(pid) for pid in pids)
            with contextlib.ExitStack() as idle:
                for _ in range(2):
                    # Idle: connected, subscribed to a tool that sends nothing now.
                    url = f"ws://{gw}/ws/metrics?tool_id=idle"
                    idle.enter_context(clients("idle", url, IDLE // 2))
                time.sleep(2)
                per_idle = (sum(rss_kib(pid) for pid in pids) - before) / IDLE
                client = Redis.from_url(redis.url)
                redis_cpu = cpu_seconds(redis.process.pid)
                run = _latency(addr, gw, 2)
                redis_cpu = cpu_seconds(redis.process.pid) - redis_cpu
                entries = int(client.xlen("omnimetrics:batches"))
                stream_bytes = int(client.memory_usage("omnimetrics:batches") or 0)
    c = summarize(run.arrived, commit_times(commits), BATCHES, LATENCY_CLIENTS)
    print(f"gateway crowd: {IDLE:,} idle (a quiet tool's) + {LATENCY_CLIENTS:,} active (every "
          "batch) WS clients over 2 workers")  # fmt: skip
    print(f"  commit-to-receive of the active ones: {fmt(c)} (target p99 <= 100)")
    print(f"  workers' RSS per idle connection: {per_idle:.1f} KiB (target <= 25)")
    print(f"  Redis: {redis_cpu * 1000:.0f} ms CPU over the {BATCHES} s of batches, "
          f"{redis_cpu / BATCHES * 1000:.2f} ms per ~1 KB batch (its XADD, the 2 workers' "
          "reads, and the heartbeats and settings polls meanwhile); its stream holds "
          f"{entries} entries in {stream_bytes:,} B ({stream_bytes / max(entries, 1):,.0f} B "
          "per batch)")  # fmt: skip


def run() -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        with RedisServer(tmp) as redis:
            catch_up(tmp, redis)
            redis.stop()
            redis.start()
            fan_out(tmp, redis)
            crowd(tmp, redis)
