"""`omnimetrics serve` as a user runs it: a real process, real ports, real signals."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from schemas.db import Database
from tests.helpers import Reply, Upstream, free_port, wait_for

EXE = [sys.executable, "-m", "omnimetrics.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXE, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["serve", "--port", "abc"], "port"),
        (["serve", "--port", "70000"], "port"),
        (["serve", "--bogus"], "--bogus"),
        (["frobnicate"], "frobnicate"),
        ([], "COMMAND"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args: list[str], needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("omnimetrics: error:") and needle in lines[0]


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"OMNIMETRICS_RETENTION_RAW": "12h"}, "retention_raw must be at least 1d"),
        ({"OMNIMETRICS_RETENTION_RAW": "thirty"}, "retention_raw"),
        ({"OMNIMETRICS_RETENTION_ROLLUP": "7d"}, "retention_rollup must be at least retention_raw"),
        ({"OMNIMETRICS_RETENTION_INTERVAL": "5s"}, "retention_interval must be from 1m to 1d"),
    ],
)
def test_bad_retention_settings_exit_2(tmp_path: Path, env: dict[str, str], needle: str) -> None:
    result = run_cli("serve", env={**env, "OMNIMETRICS_DB": str(tmp_path / "x")})
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--redis-url", "localhost:6379"], {}, "redis_url"),
        ([], {"OMNIMETRICS_REDIS_URL": "http://127.0.0.1:6379"}, "redis_url"),
        ([], {"OMNIMETRICS_REDIS_MAXLEN": "0"}, "redis_maxlen"),
        ([], {"OMNIMETRICS_REDIS_PREFIX": "a b"}, "redis_prefix"),
    ],
)
def test_bad_redis_settings_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], needle: str
) -> None:
    result = run_cli("serve", *args, env={**env, "OMNIMETRICS_DB": str(tmp_path / "x")})
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr


GATEWAY = ["gateway", "--redis-url", "redis://127.0.0.1:1/0", "--writer-url", "http://127.0.0.1:1"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["gateway", "--writer-url", "http://127.0.0.1:1"], "needs --redis-url"),
        (["gateway", "--redis-url", "redis://127.0.0.1:1/0"], "needs --writer-url"),
        ([*GATEWAY[:-1], "ftp://writer"], "writer_url"),
        ([*GATEWAY, "--workers", "0"], "gateway_workers"),
        ([*GATEWAY, "--port", "0"], "gateway_port"),
    ],
)
def test_bad_gateway_flags_exit_2(args: list[str], needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr


def test_a_gateway_without_a_writer_in_redis_is_one_line_and_exit_3() -> None:
    result = run_cli(*GATEWAY, "--port", str(free_port()),
                     env={"OMNIMETRICS_GATEWAY_START_SECONDS": "0.5"})  # fmt: skip
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot start the gateway" in lines[0], result.stderr


def test_bad_environment_twin_exits_2(tmp_path: Path) -> None:
    result = run_cli(
        "serve", env={"OMNIMETRICS_PORT": "nope", "OMNIMETRICS_DB": str(tmp_path / "x")}
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "port" in result.stderr


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[[sources]\nname=", "not valid TOML"),
        ('[[sources]]\nname = "a"\n', "sources.0.url: Field required"),
        ('[[sources]]\nname = "a"\nurl = "http://x/"\nformat = "xml"\n', "sources.0.format"),
        ('[[sources]]\nname = "a"\nurl = "ftp://x/"\n', "sources.0.url"),
        ('[[sources]]\nname = "a"\nurl = "http://x/"\ntimeout_seconds = -1\n', "timeout_seconds"),
        ('[[sources]]\nname = "a"\nurl = "http://x/"\n[sources.kinds]\n"m" = "histogram"\n',
         "kinds"),
        ('[[sources]]\nname = "a"\nurl = "http://x/"\n[[sources]]\nname = "a"\nurl = "http://y/"\n',
         "defined twice"),
        ('[tenants.local]\ncollection_interval_seconds = 0\n', "collection_interval_seconds"),
        ("[tenants.'a b']\nperformance_profile = \"disabled\"\n", "tenants.a b"),
        ('[[sources]]\nname = "a"\nurl = "http://x/"\nsample_limit = 0\n', "sample_limit"),
        ('colour = "blue"\n', "colour"),
    ],
)  # fmt: skip
def test_bad_config_exits_2_naming_the_problem(tmp_path: Path, toml: str, needle: str) -> None:
    config = tmp_path / "omnimetrics.toml"
    config.write_text(toml)
    result = run_cli("serve", "--config", str(config), "--db", str(tmp_path / "db.duckdb"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "cannot read config file" in result.stderr


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start(
    procs: list[subprocess.Popen[bytes]],
    *args: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> int:
    port = port or free_port()
    proc = subprocess.Popen(
        [*EXE, "serve", "--port", str(port), *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(proc)

    def up() -> bool:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=30, interval=0.1)
    return port


def test_serve_demo_shows_live_data_within_seconds(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    env = {
        "OMNIMETRICS_DEMO_EMBEDDINGS_PORT": str(free_port()),
        "OMNIMETRICS_DEMO_COMPRESSION_PORT": str(free_port()),
    }
    started = time.monotonic()
    port = start(processes, "--demo", "--db", str(tmp_path / "demo.duckdb"), env=env)

    def every_source() -> set[str]:  # the demo's two upstreams, and its own /metrics
        series = httpx.get(f"http://127.0.0.1:{port}/api/v1/latest").json()["series"]
        got = {s["source"] for s in series if s["metric"] == "up" and s["value"] == 1}
        return got if got == {"embeddings", "compression", "omnimetrics"} else set()

    wait_for(every_source, timeout=10, interval=0.2)
    assert time.monotonic() - started < 15
    latest = httpx.get(f"http://127.0.0.1:{port}/api/v1/latest", params={"source": "embeddings"})
    metrics = {s["metric"]: s["kind"] for s in latest.json()["series"]}
    assert metrics["mlx_metrics.total_embeddings"] == "counter"
    assert metrics["mlx_metrics.cache_hit_rate"] == "gauge"


def test_kill_9_loses_nothing_committed_and_never_reuses_seq(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    db = str(tmp_path / "crash.duckdb")
    with Upstream() as upstream:
        n = 0

        def stats() -> Reply:
            nonlocal n
            n += 1
            return Reply(body=orjson.dumps({"metrics": {"total": n}}))

        url = upstream.script("/stats", *[stats() for _ in range(1000)])
        config = tmp_path / "c.toml"
        config.write_text(f'[[sources]]\nname = "up"\nurl = "{url}"\n')
        port = start(processes, "--config", str(config), "--db", db)
        base = f"http://127.0.0.1:{port}"

        answers: dict[str, int | None] = {}
        stop = threading.Event()
        threads = [threading.Thread(target=push_until_stopped, args=(base, w, stop, answers, 5))
                   for w in range(4)]  # fmt: skip
        for thread in threads:
            thread.start()
        wait_for(lambda: len(acknowledged(answers)) > 100, timeout=30)
        before = httpx.get(f"{base}/api/v1/series", params={"limit": 100_000}).json()["samples"]
        processes[-1].send_signal(signal.SIGKILL)
        processes[-1].wait(timeout=10)
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        acked = acknowledged(answers)

        port = start(processes, "--config", str(config), "--db", db)
        base = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: httpx.get(f"{base}/health").json()["writer"]["last_seq"] > before[-1]["seq"]
        )
        after = httpx.get(f"{base}/api/v1/series", params={"limit": 100_000}).json()["samples"]

    by_seq = {s["seq"]: s for s in after}
    assert len(by_seq) == len(after), "a seq was reused"
    assert [s["seq"] for s in after] == sorted(by_seq)
    for sample in before:  # every batch seen committed before the kill is there, unchanged
        assert by_seq[sample["seq"]] == sample
    pushed = {s["session_id"] for s in after if s["source"] == "pusher"}
    assert acked <= pushed, f"{len(acked - pushed)} acknowledged pushes were lost"
    assert len([s for s in after if s["source"] == "pusher"]) == len(pushed), "a push stored twice"
    # Collection resumed after the restart, with seq numbers above everything before.
    max_before = max(s["seq"] for s in before)
    assert any(s["seq"] > max_before and s["source"] == "up" for s in after)


def test_kill_9_during_pushes_with_retries_stores_every_event_exactly_once(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    db, config = str(tmp_path / "retry.duckdb"), tmp_path / "none.toml"
    config.write_text("sources = []\n")
    port = start(processes, "--config", str(config), "--db", db)
    base = f"http://127.0.0.1:{port}"
    workers, per_worker = 4, 150
    acknowledged: list[str] = []
    retries = [0]

    def pusher(worker: int) -> None:
        """Each event until it is answered 202, the same event_id every time."""
        with httpx.Client(timeout=2) as client:
            for i in range(per_worker):
                event_id = f"w{worker}-{i}"
                body = {"source": "pusher", "kind": "delta", "session_id": event_id,
                        "event_id": event_id, "metrics": {"n": 1}}  # fmt: skip
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        if client.post(f"{base}/ingest", json=body).status_code == 202:
                            acknowledged.append(event_id)
                            break
                    except httpx.HTTPError:
                        pass  # the server is gone for now, or the answer was lost
                    retries[0] += 1
                    time.sleep(0.05)

    threads = [threading.Thread(target=pusher, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(acknowledged) > 100, timeout=30)
    processes[-1].send_signal(signal.SIGKILL)
    processes[-1].wait(timeout=10)
    start(processes, "--config", str(config), "--db", db, port=port)
    for thread in threads:
        thread.join(timeout=90)
    assert retries[0] > 0, "the kill interrupted no push"
    assert len(acknowledged) == workers * per_worker
    samples = httpx.get(f"{base}/api/v1/series", params={"source": "pusher", "limit": 100_000,
                        "from": "2000-01-01T00:00:00Z"}).json()["samples"]  # fmt: skip
    stored = [s["session_id"] for s in samples]
    assert sorted(stored) == sorted(acknowledged)  # every one, and each exactly once


def test_sigterm_during_a_tick_ends_it_cleanly(tmp_path: Path) -> None:
    """A tick in flight (a source answering slowly) when SIGTERM arrives: it finishes
    under the grace period, the process exits promptly, and nothing is a traceback."""
    with Upstream() as upstream:
        slow = upstream.script("/slow", Reply(body=b'{"total": 1}', delay=0.7))
        fast = upstream.script("/fast", Reply(body=b'{"total": 1}'))
        config = tmp_path / "slow.toml"
        config.write_text(f'[[sources]]\nname = "slow"\nurl = "{slow}"\n'
                          f'[[sources]]\nname = "fast"\nurl = "{fast}"\n')  # fmt: skip
        proc, port = serve_logged(config, tmp_path / "t.duckdb")
        try:

            def ticking() -> bool:
                try:
                    body = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
                except httpx.HTTPError:
                    return False
                return bool(body["collection"].get("local", {}).get("ticks_run", 0) >= 3)

            wait_for(ticking, timeout=30, interval=0.1)
            wait_for(lambda: upstream.requests["/slow"] > upstream.requests["/fast"] - 1,
                     timeout=5)  # fmt: skip
            time.sleep(0.3)  # inside a tick: the slow source is being waited for
            err, elapsed = sigterm(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
        requested = upstream.requests["/slow"]
    log = err.decode()
    assert elapsed < 10
    assert proc.returncode == 0, log  # a clean shutdown, not the signal raised again
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert "abandoned" not in log  # it finished within the grace period
    # Every scrape that was sent, the one in flight at SIGTERM too, was committed.
    db = Database(tmp_path / "t.duckdb", read_only=True)
    try:
        (written,) = db.read_sync(lambda c: c.execute(
            "SELECT count(*) FROM scrapes WHERE source = 'slow'").fetchall()[0])  # fmt: skip
    finally:
        db.close()
    assert written == requested


@pytest.mark.parametrize("which", ["server", "demo upstream"])
def test_a_port_in_use_is_one_line_and_exit_3(tmp_path: Path, which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        port = busy if which == "server" else str(free_port())
        env = {"OMNIMETRICS_DEMO_EMBEDDINGS_PORT": busy if which != "server" else str(free_port()),
               "OMNIMETRICS_DEMO_COMPRESSION_PORT": str(free_port())}  # fmt: skip
        result = run_cli("serve", "--demo", "--port", port, "--db", str(tmp_path / "t.duckdb"),
                         env=env)  # fmt: skip
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    what = "omnimetrics" if which == "server" else "the demo's embeddings upstream"
    assert lines[0] == (
        f"omnimetrics: error: cannot listen on 127.0.0.1:{busy}: address already in use "
        f"(for {what})"
    )


def test_json_logs_are_one_object_a_line_and_probes_and_the_demo_are_quiet(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {**os.environ, "OMNIMETRICS_DEMO_EMBEDDINGS_PORT": str(free_port()),
           "OMNIMETRICS_DEMO_COMPRESSION_PORT": str(free_port())}  # fmt: skip
    proc = subprocess.Popen(
        [*EXE, "serve", "--demo", "--port", str(port), "--db", str(tmp_path / "t.duckdb"),
         "--log-format", "json"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def scraped_itself() -> bool:  # the demo's own /metrics, scraped every tick
            try:
                latest = httpx.get(f"{base}/api/v1/latest", params={"source": "omnimetrics"},
                                   timeout=2).json()  # fmt: skip
            except httpx.HTTPError:
                return False
            return any(s["metric"] == "omnimetrics_ticks_total" for s in latest["series"])

        wait_for(scraped_itself, timeout=30, interval=0.2)
        for _ in range(3):
            httpx.get(f"{base}/health")
            httpx.get(f"{base}/metrics")
        assert httpx.get(f"{base}/api/v1/nothing-here").status_code == 404
        time.sleep(1.5)  # a few more ticks: the demo upstreams are asked twice each
        err, elapsed = sigterm(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert elapsed < 10 and proc.returncode == 0
    lines = [orjson.loads(line) for line in err.decode().splitlines()]  # each one JSON
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    paths = [line["path"] for line in access]
    assert "/api/v1/nothing-here" in paths and access[paths.index("/api/v1/nothing-here")][
        "status"] == 404  # fmt: skip
    assert not any(p.startswith(("/health", "/metrics", "/stats")) for p in paths), paths
    assert not any("Traceback" in line["message"] for line in lines)
    messages = [line["message"] for line in lines]
    assert messages.count(f"Started server process [{proc.pid}]") == 1, messages


def test_sigterm_commits_or_refuses_every_push_and_ends_streams_with_their_cursor(
    tmp_path: Path,
) -> None:
    """Pushers and a WebSocket and an SSE client when SIGTERM arrives: each push is
    committed (202) or refused (503) or never reached the server, the WebSocket closes
    1001 with its resume cursor, the SSE stream ends, and the process exits 0 within 10 s."""
    config = tmp_path / "none.toml"
    config.write_text("sources = []\n")
    proc, port = serve_logged(config, tmp_path / "t.duckdb")
    base = f"http://127.0.0.1:{port}"
    answers: dict[str, int | None] = {}  # event id -> status (None: no answer)
    stop = threading.Event()

    closed: list[tuple[int, str]] = []
    sse_lines: list[str] = []

    def watcher() -> None:
        with ws_connect(f"ws://127.0.0.1:{port}/ws/metrics", open_timeout=10) as ws:
            try:
                while True:
                    ws.recv(timeout=20)
            except ConnectionClosed as exc:
                assert exc.rcvd is not None
                closed.append((exc.rcvd.code, exc.rcvd.reason))

    def sse() -> None:
        with httpx.stream("GET", f"{base}/stream/metrics", timeout=20) as response:
            sse_lines.extend(response.iter_lines())  # returns when the stream ends

    try:
        wait_for(lambda: _answers(base), timeout=30, interval=0.1)
        threads = [threading.Thread(target=push_until_stopped, args=(base, w, stop, answers, 15))
                   for w in range(6)]  # fmt: skip
        threads += [threading.Thread(target=watcher), threading.Thread(target=sse)]
        for t in threads:
            t.start()
        wait_for(lambda: len(acknowledged(answers)) >= 50, timeout=30)
        err, elapsed = sigterm(proc)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    log = err.decode()
    assert proc.returncode == 0 and elapsed < 10, log
    assert "Traceback" not in log, log
    statuses = set(answers.values())
    assert statuses <= {202, 503, None}, statuses
    assert closed and closed[0][0] == 1001, closed
    assert closed[0][1].startswith("server shutting down; resume from "), closed
    assert any(line.startswith("data:") for line in sse_lines)  # it was served, then ended
    db = Database(tmp_path / "t.duckdb", read_only=True)
    try:
        stored = db.read_sync(lambda c: {r[0] for r in c.execute(
            "SELECT event_id FROM ingest_events").fetchall()})  # fmt: skip
    finally:
        db.close()
    refused = {e for e, status in answers.items() if status == 503}
    assert acknowledged(answers) <= stored  # every 202 was committed
    assert not refused & stored  # a 503 stored nothing
    assert stored <= set(answers)


def serve_logged(config: Path, db: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`omnimetrics serve` on a free port, its stderr kept (for `sigterm`)."""
    port = free_port()
    proc = subprocess.Popen(
        [*EXE, "serve", "--port", str(port), "--config", str(config), "--db", str(db)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    return proc, port


def sigterm(proc: subprocess.Popen[bytes]) -> tuple[bytes, float]:
    """SIGTERM, then wait (15 s at most) for the exit: its stderr and the seconds it took."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    return err, time.monotonic() - started


def push_until_stopped(
    base: str, worker: int, stop: threading.Event, answers: dict[str, int | None], timeout: float
) -> None:
    """Push one event at a time (its id also its session) until `stop` is set or the server
    goes away, each event id's status into `answers` (None: no answer)."""
    with httpx.Client(timeout=timeout) as client:
        for i in range(10_000):
            if stop.is_set():
                return
            event_id = f"w{worker}-{i}"
            body = {"source": "pusher", "kind": "delta", "session_id": event_id,
                    "event_id": event_id, "metrics": {"n": i}}  # fmt: skip
            try:
                answers[event_id] = client.post(f"{base}/ingest", json=body).status_code
            except httpx.HTTPError:
                answers[event_id] = None
                return  # the server is going away


def acknowledged(answers: dict[str, int | None]) -> set[str]:
    """The event ids answered 202 (read while pushers still write)."""
    return {e for e, status in list(answers.items()) if status == 202}


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
