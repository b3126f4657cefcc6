"""Issue 3: latency and fan-out at 1,000 WebSocket clients, memory per idle connection at
5,000, and the old service's lock-and-await fan-out in the same run, with and without a
client that stops reading. Servers and clients each run in their own process."""

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson

from bench import write_floor
from stream.batches import Batch, Block, Row
from stream.encode import Filter
from stream.hub import Hub
from tests.helpers import StalledWebSocket

LATENCY_CLIENTS = 1_000
CLIENT_PROCESSES = 2  # one Python process needs ~30 ms just to read 1,000 messages
BATCHES = 15
IDLE_CLIENTS = 5_000
STALL_CLIENTS = 100
STALL_BATCHES = 400
FILLER_1KB = {f"m{i:02d}": 1000 + i for i in range(40)}  # a ~1 KB message with sent_at
FILLER_20KB = {f"measurement_{i:04d}": 1000 + i for i in range(700)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str) -> None:
    for _ in range(300):
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1)
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def process(*args: str) -> Iterator[subprocess.Popen[str]]:
    # Capacity is measured here, not the stream limits: they are lifted for the run.
    env = {**os.environ, "OMNIMETRICS_LOG_LEVEL": "warning", "OMNIMETRICS_MAX_STREAMS": "100000",
           "OMNIMETRICS_MAX_STREAMS_PER_TENANT": "100000",
           "OMNIMETRICS_NEW_STREAMS_PER_SECOND": "100000"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, *args], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def omnimetrics(
    tmp: Path, commits: Path | None = None, db: Path | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`omnimetrics serve` (on a new database, or `db`); with `commits`, the writer's
    commit times land there on exit."""
    port = free_port()
    config = tmp / "bench.toml"
    # Every batch on its own (the stall run pushes far faster than the default pacing).
    config.write_text("sources = []\n[tenants.local]\nmax_events_per_minute = 1000000\n")
    db = db or tmp / f"bench-{port}.duckdb"
    command = ["-m", "omnimetrics.cli"]
    if commits is not None:
        command = ["-m", "bench.serve_timed", "--commits-out", str(commits)]
    with process(*command, "serve", "--port", str(port), "--db", str(db),
                 "--config", str(config)) as proc:  # fmt: skip
        wait_http(f"http://127.0.0.1:{port}/health")
        yield proc, f"127.0.0.1:{port}"


@contextlib.contextmanager
def baseline() -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    with process("-m", "bench.baseline", "--port", str(port)) as proc:
        wait_http(f"http://127.0.0.1:{port}/broadcast")
        yield proc, f"127.0.0.1:{port}"


@contextlib.contextmanager
def clients(mode: str, url: str, n: int) -> Iterator[subprocess.Popen[str]]:
    with process("-m", "bench.ws_clients", mode, "--url", url, "--clients", str(n)) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", line
        yield proc


@contextlib.contextmanager
def client_pool(url: str, n: int) -> Iterator[list[subprocess.Popen[str]]]:
    """n latency clients spread over CLIENT_PROCESSES processes."""
    with contextlib.ExitStack() as stack:
        share = n // CLIENT_PROCESSES
        yield [stack.enter_context(clients("latency", url, share)) for _ in range(CLIENT_PROCESSES)]


def arrivals(procs: list[subprocess.Popen[str]]) -> dict[int, list[float]]:
    """Every client's arrival time of every message, per seq, from all the processes."""
    merged: dict[int, list[float]] = {}
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        for seq, times in orjson.loads(out.strip().splitlines()[-1]).items():
            merged.setdefault(int(seq), []).extend(times)
    return merged


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def commit_times(path: Path) -> dict[int, float]:
    """What bench/serve_timed.py wrote on exit: each commit's time, per last seq."""
    return {int(seq): t for seq, t in orjson.loads(path.read_bytes()).items()}


def summarize(
    arrived: dict[int, list[float]], origin: dict[int, float], expected: int, n_clients: int
) -> dict[str, float]:
    """Latencies from each seq's `origin` time to every client's arrival."""
    received = {seq: [t - origin[seq] for t in times] for seq, times in arrived.items()}
    latencies = [v for vs in received.values() for v in vs]
    complete = [vs for vs in received.values() if len(vs) == n_clients]
    nan = float("nan")
    lasts = [max(vs) for vs in complete]
    spreads = [max(vs) - min(vs) for vs in complete]
    return {
        "p50": statistics.median(latencies) * 1000 if latencies else nan,
        "p99": pct(latencies, 0.99) * 1000 if latencies else nan,
        "last_p50": statistics.median(lasts) * 1000 if lasts else nan,
        "spread_p50": statistics.median(spreads) * 1000 if spreads else nan,
        "delivered": len(latencies) / (expected * n_clients),
    }


def push_ours(http: httpx.Client, filler: dict[str, int]) -> tuple[int, float]:
    """Push one batch once it is committed; its seq and when it was sent."""
    sent = time.time()
    response = http.post("/ingest", json={"source": "bench", "kind": "gauge",
                                          "metrics": {**filler, "sent_at": sent}})  # fmt: skip
    return response.json()["seq"], sent


def push_baseline(http: httpx.Client, seq: int, filler: dict[str, int]) -> float | None:
    """Broadcast one message; how long the broadcast held the lock (None: it timed out)."""
    message = {"type": "metrics", "seq": seq, "data": {"bench": {**filler, "sent_at": time.time()}}}
    try:
        response = http.post("/broadcast", content=orjson.dumps(message), timeout=2)
        seconds: float = response.json()["seconds"]
        return seconds
    except httpx.TimeoutException:
        return None


def latency_run(tmp: Path) -> dict[str, dict[str, float]]:
    results = {}
    commits = tmp / "commits.json"
    with omnimetrics(tmp, commits) as (_, addr):
        sent: dict[int, float] = {}
        with client_pool(f"ws://{addr}/ws/metrics", LATENCY_CLIENTS) as readers:
            with httpx.Client(base_url=f"http://{addr}") as http:
                for _ in range(BATCHES):
                    seq, at = push_ours(http, FILLER_1KB)
                    sent[seq] = at
                    time.sleep(1)
                streams = http.get("/health").json()["streams"]
            arrived = arrivals(readers)
    committed = commit_times(commits)
    results["commit"] = summarize(arrived, committed, BATCHES, LATENCY_CLIENTS)
    results["push"] = summarize(arrived, sent, BATCHES, LATENCY_CLIENTS)
    results["server"] = {f"{name}_{stat}": streams[name][stat]
                         for name in ("fanout_ms", "commit_to_sent_ms")
                         for stat in ("p50", "max")}  # fmt: skip
    with baseline() as (_, addr), client_pool(f"ws://{addr}/ws", LATENCY_CLIENTS) as readers:
        held = []
        sent = {}
        with httpx.Client(base_url=f"http://{addr}") as http:
            for seq in range(BATCHES):
                sent[seq] = time.time()
                held.append(push_baseline(http, seq, FILLER_1KB))
                time.sleep(1)
        results["baseline"] = summarize(arrivals(readers), sent, BATCHES, LATENCY_CLIENTS)
        results["baseline"]["lock_held_p50"] = statistics.median(h for h in held if h) * 1000
    return results


def dispatch_time() -> float:
    """In-process: the hub encoding one ~1 KB batch once and queueing it for 1,000 clients."""
    hub = Hub("bench", 0)
    for _ in range(LATENCY_CLIENTS):
        hub.add(Filter())
    now = datetime.now(UTC)
    rows = [Row(i + 1, 1, now, i + 1, "local", None, None, "bench", name, (), "gauge",
                float(v), None)
            for i, (name, v) in enumerate(FILLER_1KB.items())]  # fmt: skip
    batch = Batch(1, len(rows), Block.of_rows(rows), 0, len(rows), [])
    timings = []
    for k in range(20):
        started = time.perf_counter()
        hub.dispatch([batch._replace(last_seq=len(rows) + k)], len(rows) + k)
        timings.append(time.perf_counter() - started)
        for clients_ in list(hub._by_filter.values()):  # empty the queues between runs
            for c in clients_:
                while c.queued_bytes:
                    c._queue.popleft()
                    c._bytes = 0
    return statistics.median(timings) * 1000


def stall_run(tmp: Path) -> dict[str, dict[str, float]]:
    """100 clients, one of which stops reading; 400 ~20 KB batches at 50 per second.
    Latencies from the commit for omnimetrics, from sending the broadcast for the baseline."""
    results = {}
    commits = tmp / "stall-commits.json"
    for name in ("omnimetrics", "baseline"):
        server = omnimetrics(tmp, commits) if name == "omnimetrics" else baseline()
        with server as (_, addr):
            path = "/ws/metrics" if name == "omnimetrics" else "/ws"
            host, port = addr.split(":")
            with clients("latency", f"ws://{addr}{path}", STALL_CLIENTS - 1) as readers:
                stalled = StalledWebSocket(host, int(port), path)
                stuck = 0
                sent: dict[int, float] = {}
                with httpx.Client(base_url=f"http://{addr}") as http:
                    started = time.monotonic()
                    for seq in range(STALL_BATCHES):
                        if name == "omnimetrics":
                            ours, at = push_ours(http, FILLER_20KB)
                            sent[ours] = at
                        else:
                            sent[seq] = time.time()
                            stuck += push_baseline(http, seq, FILLER_20KB) is None
                            if stuck >= 3:  # every broadcast now waits on the stalled client
                                break
                        time.sleep(0.02)
                    elapsed = time.monotonic() - started
                time.sleep(2)
                arrived = arrivals([readers])
                stalled.sock.close()
        if name == "omnimetrics":
            sent = commit_times(commits)
        results[name] = summarize(arrived, sent, STALL_BATCHES, STALL_CLIENTS - 1)
        results[name]["seconds"] = elapsed
    return results


def idle_rss(tmp: Path) -> dict[str, float]:
    out = {}
    for name in ("omnimetrics", "bare websockets"):
        if name == "omnimetrics":
            server = omnimetrics(tmp)
            path = "/ws/metrics"
        else:
            port = free_port()
            server = _bare(port)
            path = ""
        with server as (proc, addr):
            time.sleep(1)
            before = rss_kib(proc.pid)
            with clients("idle", f"ws://{addr}{path}", IDLE_CLIENTS):
                time.sleep(2)
                after = rss_kib(proc.pid)
        out[name] = (after - before) / IDLE_CLIENTS
    return out


@contextlib.contextmanager
def _bare(port: int) -> Iterator[tuple[subprocess.Popen[str], str]]:
    with process("-m", "bench.bare_ws", "--port", str(port)) as proc:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.1)
        yield proc, f"127.0.0.1:{port}"


def fmt(stats: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" if k != "delivered" else f"delivered {v:.1%}"
                     for k, v in stats.items())  # fmt: skip


def run() -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        lat = latency_run(tmp)
        print(f"stream: {LATENCY_CLIENTS} WS clients in {CLIENT_PROCESSES} processes, "
              f"1 batch/s of ~1 KB, {BATCHES} batches")  # fmt: skip
        print("  latency in ms over every client and batch: p50, p99; last_p50 = until the last")
        print("  client; spread_p50 = first to last client (the fan-out as the clients see it)")
        c, o, b, srv = lat["commit"], lat["push"], lat["baseline"], lat["server"]
        print(f"  omnimetrics, commit-to-receive (target p99 <= 50): {fmt(c)}")
        print("    from the writer's commit, stamped in its thread, to each client's arrival")
        print(f"  omnimetrics, from sending the push (HTTP, validation, commit too): {fmt(o)}")
        print(f"  baseline ConnectionManager (lock, await each), from sending the broadcast: "
              f"{fmt(b)}")  # fmt: skip
        print(f"  ratio omnimetrics/baseline: p99 (commit-to-receive/broadcast-to-receive) "
              f"{c['p99'] / b['p99']:.2f}, fan-out spread {c['spread_p50'] / b['spread_p50']:.2f}"
              )  # fmt: skip
        print(f"  server fan-out, dispatch to the last client's send: "
              f"{srv['fanout_ms_p50']:.1f} ms p50, {srv['fanout_ms_max']:.1f} max "
              f"(target <= 20)")  # fmt: skip
        floor = write_floor.median_ms(LATENCY_CLIENTS, CLIENT_PROCESSES)
        print(f"  floor: one thread writing the same 1 KB to {LATENCY_CLIENTS:,} loopback sockets "
              f"whose readers wait in {CLIENT_PROCESSES} processes: {floor:.1f} ms p50; "
              f"fan-out/floor {srv['fanout_ms_p50'] / floor:.2f}")  # fmt: skip
        print(f"  server, commit to the last client's send: "
              f"{srv['commit_to_sent_ms_p50']:.1f} ms p50, {srv['commit_to_sent_ms_max']:.1f} max"
              )  # fmt: skip
        print(f"  hub dispatch in-process (encode once, queue for 1,000): {dispatch_time():.2f} ms")
        stall = stall_run(tmp)
        print(f"stall: {STALL_CLIENTS} clients, one stops reading; {STALL_BATCHES} ~20 KB batches")
        print(f"  omnimetrics, from the commit: {fmt(stall['omnimetrics'])}")
        print(f"  baseline, from the broadcast: {fmt(stall['baseline'])}")
        rss = idle_rss(tmp)
        print(f"memory: RSS per idle WS connection at {IDLE_CLIENTS:,} connections")
        ours, bare = rss["omnimetrics"], rss["bare websockets"]
        print(f"  omnimetrics {ours:.1f} KiB (target <= 25), bare websockets {bare:.1f} KiB, "
              f"ratio {ours / bare:.2f}")  # fmt: skip
