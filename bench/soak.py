"""[W2 3/5]: the soak. `omnimetrics serve --demo` as the CLI runs it (demo ticks at 1 s),
20 pushes a second, and 300 WebSocket and 50 SSE clients (in a process of their own)
that read 5-60 s, disconnect and resume with their cursor, one in ten stopping to read
for 30 s meanwhile. `python -m bench soak [--minutes 20]`.

Printed: the server's RSS each minute and its growth from minute 5 to the end (target
< 5%), every resuming client's messages checked against the store (each message ends on
a batch and holds every batch since the one before it, `coalesced` saying how many:
0 lost or duplicated), ticks skipped (target 0), and `/health` the while.
"""

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_right
from pathlib import Path

import duckdb
import httpx
import orjson

from bench.stream import free_port, rss_kib, wait_http
from tests.helpers import serve_demo

WS_CLIENTS, SSE_CLIENTS = 300, 50
PUSHES_PER_SECOND = 20


class Pusher(threading.Thread):
    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.stop = threading.Event()
        self.failed = 0
        self.pushed = 0

    def run(self) -> None:
        started = time.monotonic()
        with httpx.Client(base_url=self.base, timeout=30) as http:
            while not self.stop.is_set():
                body = {"source": "soak", "kind": "counter", "metrics": {"total": self.pushed}}
                try:
                    ok = http.post("/ingest", json=body).status_code == 202
                except httpx.HTTPError:
                    ok = False
                self.pushed += ok
                self.failed += not ok
                # Paced by the clock, not by a pause after each push (which only reached
                # ~15/s): a push that took long is made up for by the next.
                due = started + (self.pushed + self.failed) / PUSHES_PER_SECOND
                self.stop.wait(max(0.0, due - time.monotonic()))


def check(clients: list[dict[str, list[int] | int]], ends: list[int]) -> tuple[int, int]:
    """Clients whose messages miss or repeat a batch, and the messages checked."""
    bad = checked = 0
    for client in clients:
        seqs, merged, start = client["seqs"], client["merged"], client["start"]
        assert isinstance(seqs, list) and isinstance(merged, list)
        if start is None or not seqs:
            continue
        held = [bisect_right(ends, s) for s in seqs]
        before = bisect_right(ends, int(start))  # type: ignore[call-overload]
        ok = seqs == sorted(set(seqs)) and set(seqs) <= set(ends)
        ok = ok and merged == [b - a for a, b in zip([before, *held], held, strict=False)]
        bad += not ok
        checked += len(seqs)
    return bad, checked


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench soak")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--trace", type=Path, help="run the server under bench.tracemem, "
                        "writing what its memory holds each minute to this file")  # fmt: skip
    parser.add_argument("--no-heap", action="store_true",
                        help="with --trace: no tracemalloc (it stalls the server)")  # fmt: skip
    args = parser.parse_args(argv or [])
    with tempfile.TemporaryDirectory() as name:
        db = Path(name) / "soak.duckdb"
        port = free_port()
        command, env = serve_demo(port, db)
        if args.trace is not None:  # the same arguments, under tracemalloc
            heap = ["--no-heap"] if args.no_heap else []
            command = [sys.executable, "-m", "bench.tracemem", str(args.trace), *heap,
                       *command[3:]]  # fmt: skip
        server = subprocess.Popen(command, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{base}/health")
            clients = subprocess.Popen(
                [sys.executable, "-m", "bench.soak_clients", "--base", base,
                 "--ws", str(WS_CLIENTS), "--sse", str(SSE_CLIENTS)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
            assert clients.stdout is not None and clients.stdin is not None
            assert clients.stdout.readline().strip() == "ready"
            pusher = Pusher(base)
            pusher.start()
            started = time.monotonic()
            rss: list[tuple[float, int]] = []
            health_slowest = 0.0
            while (elapsed := time.monotonic() - started) < args.minutes * 60:
                rss.append((elapsed / 60, rss_kib(server.pid)))
                asked = time.perf_counter()
                httpx.get(f"{base}/health", timeout=60)
                health_slowest = max(health_slowest, time.perf_counter() - asked)
                time.sleep(10)
            pusher.stop.set()
            pusher.join()
            collection = httpx.get(f"{base}/health", timeout=60).json()["collection"]
            out, _ = clients.communicate("", timeout=300)
            received = orjson.loads(out.strip().splitlines()[-1])
        finally:
            server.terminate()
            server.wait(timeout=30)
        con = duckdb.connect(str(db), read_only=True)
        ends = [e for (e,) in con.execute(
            "SELECT max(seq) FROM points GROUP BY batch ORDER BY 1").fetchall()]  # fmt: skip
        con.close()
    bad, checked = check(received, ends)
    skipped = sum(c["ticks_skipped"] for c in collection.values())
    five = next((kib for minute, kib in rss if minute >= 5), None)
    print(f"soak: {args.minutes:g} min, demo ticks at 1 s, {PUSHES_PER_SECOND} pushes/s "
          f"({pusher.pushed:,} stored, {pusher.failed} failed), {WS_CLIENTS} WS + "
          f"{SSE_CLIENTS} SSE clients resuming (5-60 s each, one in ten stalling 30 s)"
          )  # fmt: skip
    by_minute = [f"{m:.0f}: {kib / 1024:.0f}" for m, kib in rss if abs(m - round(m)) < 0.09]
    print("  server RSS by minute (MiB): " + ", ".join(by_minute))
    if five is not None:
        print(f"  RSS growth from minute 5 to the end: {(rss[-1][1] / five - 1) * 100:+.1f}% "
              "(target < 5%)")  # fmt: skip
    print(f"  clients with a lost or repeated batch: {bad} of {len(received)} "
          f"({checked:,} messages checked; {sum(c['reconnects'] for c in received):,} "
          f"resumes); ticks skipped: {skipped}; slowest /health: "
          f"{health_slowest * 1000:.0f} ms")  # fmt: skip
