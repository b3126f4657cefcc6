"""[W2 3/5]: a reconnect storm through `omnimetrics serve` as the CLI runs it.

1,000 WebSocket clients (in two processes of their own) resume at once, each 1,000
batches behind, while 100 live clients (a third process) watch pushes of ~1 KB at 10 a
second. Printed: the time until the last resuming client has caught up, and that each
got every batch once in order; the live clients' commit-to-receive p99 and `/health`'s
p99 (timed from this process, a new connection each time), each beside the same figure
in a quiet phase of the same run (the floor). Targets: commit-to-receive p99 <= 200 ms,
`/health` p99 <= 100 ms during the storm.
"""

import asyncio
import contextlib
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
from websockets.sync.client import connect

from bench.catchup import store_small
from bench.stream import (
    FILLER_1KB,
    arrivals,
    clients,
    commit_times,
    omnimetrics,
    pct,
    process,
    push_ours,
    summarize,
)

STORED = 2_000
BEHIND = 1_000
RESUMING, RESUME_PROCESSES = 1_000, 2
LIVE = 100
QUIET_SECONDS = 5
PUSHES_PER_SECOND = 10


class Pusher(threading.Thread):
    """Pushes at a steady rate until stopped: each push's seq and when it was sent."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.sent: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as http:
            while not self.stop.is_set():
                seq, at = push_ours(http, FILLER_1KB)
                self.sent[seq] = at
                self.stop.wait(1 / PUSHES_PER_SECOND)


class HealthWatch(threading.Thread):
    """GET /health every 50 ms, each on a new connection (a raw socket, so the client's
    own cost is next to nothing): (when, seconds to the whole answer) of each."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self.address = (host, port)
        self.times: list[tuple[float, float]] = []
        self.failed = 0
        self.stop = threading.Event()

    def ask(self) -> bool:
        request = f"GET /health HTTP/1.1\r\nHost: {self.address[0]}\r\nConnection: close\r\n\r\n"
        with socket.create_connection(self.address, timeout=30) as sock:
            sock.sendall(request.encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        return answer.startswith(b"HTTP/1.1 200")

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                ok = self.ask()
            except OSError:
                ok = False
            self.failed += not ok
            self.times.append((time.time(), time.perf_counter() - started))
            self.stop.wait(0.05)

    def between(self, start: float, end: float) -> list[float]:
        return [seconds for at, seconds in self.times if start <= at <= end]


@contextlib.contextmanager
def resuming(url: str, since: str, until: int) -> Iterator[list[subprocess.Popen[str]]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                process(
                    "-m",
                    "bench.ws_clients",
                    "resume",
                    "--url",
                    url,
                    "--clients",
                    str(RESUMING // RESUME_PROCESSES),
                    "--since",
                    since,
                    "--until",
                    str(until),
                )
            )  # fmt: skip
            for _ in range(RESUME_PROCESSES)
        ]


def run() -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        db = tmp / "storm.duckdb"
        ends = asyncio.run(store_small(db, STORED))
        commits = tmp / "commits.json"
        with omnimetrics(tmp, commits, db) as (_, addr):
            base, ws_url = f"http://{addr}", f"ws://{addr}/ws/metrics"
            with connect(ws_url) as ws:
                epoch = orjson.loads(ws.recv())["cursor"].split(":")[0]
            host, port = addr.split(":")
            health = HealthWatch(host, int(port))
            health.start()
            with clients("latency", ws_url, LIVE) as live:
                pusher = Pusher(base)
                pusher.start()
                time.sleep(QUIET_SECONDS)
                storm_at = time.time()
                with resuming(ws_url, f"{epoch}:{ends[-BEHIND - 1]}", ends[-1]) as procs:
                    results = [orjson.loads(p.communicate(timeout=300)[0]) for p in procs]
                storm_end = time.time()
                time.sleep(1)
                pusher.stop.set()
                pusher.join()
                streams = httpx.get(f"{base}/health").json()["streams"]
                arrived = arrivals([live])
            health.stop.set()
            health.join()
        committed = commit_times(commits)
    caught = [at for r in results for at in r["at"]]
    messages = [m for r in results for m in r["messages"]]
    quiet = {s: committed[s] for s, at in pusher.sent.items() if at < storm_at and s in committed}
    storm = {s: committed[s] for s, at in pusher.sent.items()
             if storm_at <= at <= storm_end and s in committed}  # fmt: skip
    quiet_lat = summarize({s: arrived.get(s, []) for s in quiet}, committed, len(quiet), LIVE)
    storm_lat = summarize({s: arrived.get(s, []) for s in storm}, committed, len(storm), LIVE)
    quiet_health = health.between(0, storm_at)
    storm_health = health.between(storm_at, storm_end)
    print(f"storm: {RESUMING:,} WS clients in {RESUME_PROCESSES} processes resume at once, "
          f"each {BEHIND:,} batches behind; {LIVE} live clients, {PUSHES_PER_SECOND} pushes/s "
          "of ~1 KB")  # fmt: skip
    every = all(m == BEHIND for m in messages) and all(r["ordered"] for r in results)
    print(f"  all {len(caught):,} caught up in {max(caught) - storm_at:.2f} s (median "
          f"{sorted(caught)[len(caught) // 2] - storm_at:.2f} s); every batch once, in order: "
          f"{every}; told to come back: {sum(r['refused'] for r in results)} times")  # fmt: skip
    print(f"  catch-up pages read {streams['catch_up_pages']:,}, served "
          f"{streams['catch_up_pages_served']:,}")  # fmt: skip
    print(f"  live commit-to-receive p99: {storm_lat['p99']:.1f} ms during the storm "
          f"({len(storm)} pushes), {quiet_lat['p99']:.1f} ms quiet ({len(quiet)}): "
          f"{storm_lat['p99'] / quiet_lat['p99']:.2f}x (target <= 200 ms); delivered "
          f"{storm_lat['delivered']:.1%}")  # fmt: skip
    # With ~30 pushes to 100 clients, one push's lateness is the p99: which pushes, when.
    slowest = sorted(((statistics.median(t - committed[s] for t in arrived[s]), s)
                      for s in storm if arrived.get(s)), reverse=True)[:3]  # fmt: skip
    print("  slowest pushes during the storm (median over the live clients): " + ", ".join(
        f"{late * 1000:.0f} ms (committed at +{committed[s] - storm_at:.2f} s)"
        for late, s in slowest))  # fmt: skip
    print(f"  /health p99: {pct(storm_health, 0.99) * 1000:.1f} ms during the storm "
          f"({len(storm_health)} asked), {pct(quiet_health, 0.99) * 1000:.1f} ms quiet: "
          f"{pct(storm_health, 0.99) / pct(quiet_health, 0.99):.2f}x (target <= 100 ms); "
          f"failed {health.failed}")  # fmt: skip
