"""[W2 2/5]: pushes through `omnimetrics serve` as the CLI runs it, each beside its floor
measured in the same run.

- Small pushes: wrk (another process) with 16 connections POSTing one small event, against
  a bare FastAPI route on the same server stack that parses the same JSON and answers 202.
- Bulk pushes: `{"events": [10,000 events]}` and one event with 5,000 metrics, samples per
  second from sending to the 202 (after the commit), against the writer's bare Arrow
  insert of the same number of rows (narrow points, series already known), and beside
  the time it takes only to decode the same JSON body with the fastest decoders there are.
"""

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import numpy as np
import orjson
import pyarrow as pa

from ingest.writer import Writer
from schemas.db import Database
from schemas.rows import SAMPLE_SCHEMA
from schemas.signals import AppendSignal

_TS = pa.timestamp("us", tz="UTC")
WRK_SECONDS = 10
CONNECTIONS = 16
SMALL = {"source": "bench", "kind": "counter", "metrics": {"tokens_saved": 1234},
         "tool_id": "claude-code", "session_id": "s-1"}  # fmt: skip
BARE_APP = """
import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

app = FastAPI()

@app.post("/ingest")
async def ingest(request: Request) -> Response:
    orjson.loads(await request.body())
    return Response(b'{"accepted": 1, "seq": 0}', status_code=202, media_type="application/json")
"""
WRK_LUA = f"""
wrk.method = "POST"
wrk.body = '{orjson.dumps(SMALL).decode()}'
wrk.headers["Content-Type"] = "application/json"
"""


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(port: int, path: str) -> None:
    for _ in range(300):
        try:
            httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on {port}")


def _wrk(port: int, lua: Path) -> float:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{WRK_SECONDS}s", "-s", str(lua),
         f"http://127.0.0.1:{port}/ingest"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if match is None or non2xx is not None:
        raise RuntimeError(f"wrk: {out}")
    return float(match.group(1))


def _server(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    config = tmp / "push.toml"
    config.write_text("sources = []\n")
    return subprocess.Popen(
        [sys.executable, "-m", "omnimetrics.cli", "serve", "--config", str(config),
         "--db", str(tmp / "push.duckdb"), "--port", str(port)],
        env={**os.environ, "OMNIMETRICS_LOG_LEVEL": "warning",
             "OMNIMETRICS_MAX_INGEST_EVENTS_PER_MINUTE": "100000000"},
    )  # fmt: skip


def small_pushes(tmp: Path) -> None:
    if shutil.which("wrk") is None:
        print("small pushes: skipped (no wrk; `make bench` installs it)")
        return
    lua = tmp / "post.lua"
    lua.write_text(WRK_LUA)
    (tmp / "bare_app.py").write_text(BARE_APP)
    bare_port, our_port = _port(), _port()
    bare = subprocess.Popen(
        [sys.executable, "-c", "import sys, uvicorn; sys.path.insert(0, sys.argv[1]); "
         "from omnimetrics.cli import loop_factory; "
         "uvicorn.run('bare_app:app', host='127.0.0.1', port=int(sys.argv[2]), "
         "log_level='warning', access_log=False)", str(tmp), str(bare_port)],
    )  # fmt: skip
    ours = _server(tmp, our_port)
    try:
        _wait(bare_port, "/docs")
        _wait(our_port, "/health")
        bare_rate = _wrk(bare_port, lua)
        our_rate = _wrk(our_port, lua)
        health = httpx.get(f"http://127.0.0.1:{our_port}/health").json()["writer"]
    finally:
        for proc in (bare, ours):
            proc.terminate()
            proc.wait(timeout=30)
    print(f"small pushes: wrk, {CONNECTIONS} connections, {WRK_SECONDS} s each")
    print(f"  bare route (parse the JSON, answer 202): {bare_rate:8,.0f} requests/s")
    print(
        f"  POST /ingest (validated, committed):     {our_rate:8,.0f} requests/s; "
        f"{health['transactions']:,} transactions for {health['last_seq']:,} events"
    )
    print(f"  ratio ours/bare: {our_rate / bare_rate:.3f} (target >= 0.5)")


def _events(n: int, metrics: int, offset: int) -> bytes:
    events = [
        {"source": f"s{i % 50}", "kind": "counter", "tool_id": "t",
         "metrics": {f"m{k}": float(offset + i + k) for k in range(metrics)},
         "ts": f"2026-11-20T10:{(offset // 60_000) % 60:02d}:{i % 60:02d}Z"}
        for i in range(n)
    ]  # fmt: skip
    return orjson.dumps({"events": events} if n > 1 else events[0])


def bulk_pushes(tmp: Path) -> None:
    port = _port()
    ours = _server(tmp, port)
    rates = {}
    try:
        _wait(port, "/health")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for label, n, metrics in (("10,000 events", 10_000, 1),
                                      ("one event, 5,000 metrics", 1, 5_000)):  # fmt: skip
                times = []
                for round_ in range(6):  # the first creates the series
                    body = _events(n, metrics, round_ * 100_000)
                    started = time.perf_counter()
                    response = http.post("/ingest", content=body,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
                    times.append(time.perf_counter() - started)
                    assert response.status_code == 202, response.text
                rates[label] = n * metrics / sorted(times[1:])[2]
    finally:
        ours.terminate()
        ours.wait(timeout=30)
    floor = asyncio.run(_writer_floor(tmp))
    print("bulk pushes: sending to the 202 (after the commit), median of 5")
    for label, rate in rates.items():
        print(
            f"  {label}: {rate:12,.0f} samples/s (target >= 1M); "
            f"ratio to the writer's bare insert {rate / floor:.2f} (target >= 0.5)"
        )
    print(f"  the writer's bare Arrow insert of 10,000 rows of known series: {floor:,.0f} rows/s")
    body = _events(10_000, 1, 0)
    for name, decode in (
        ("orjson.loads", orjson.loads),
        ("msgspec, no types", msgspec.json.decode),
    ):
        took = _median_seconds(lambda decode=decode: decode(body))
        print(
            f"  decoding the 10,000-event body alone ({name}): {took * 1e3:.1f} ms, "
            f"{10_000 / took:,.0f} events/s before anything is checked or stored"
        )


def _median_seconds(fn: Callable[[], object], rounds: int = 11) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[rounds // 2]


async def _writer_floor(tmp: Path) -> float:
    """The writer alone: 10,000 rows of already known series, as an Arrow table."""
    db = Database(tmp / "floor.duckdb")
    writer = Writer(db, AppendSignal())
    await writer.start()
    n = 10_000
    unlabeled = SAMPLE_SCHEMA.remove(SAMPLE_SCHEMA.get_field_index("labels"))

    def table(k: int) -> pa.Table:
        return pa.Table.from_arrays([
            pa.array(np.full(n, 1_795_000_000_000_000 + k * 1_000_000), _TS),
            pa.array(["local"] * n), pa.array(["t"] * n), pa.nulls(n, pa.string()),
            pa.array([f"s{i % 50}" for i in range(n)]), pa.array(["m0"] * n),
            pa.array(["counter"] * n), pa.array(np.arange(n, dtype=np.float64) + k),
        ], schema=unlabeled)  # fmt: skip

    await writer.append(table(0))
    times = []
    for k in range(1, 8):
        t = table(k)
        started = time.perf_counter()
        await writer.append(t)
        times.append(time.perf_counter() - started)
    await writer.close()
    db.close()
    return n / sorted(times)[3]


def run() -> None:
    with tempfile.TemporaryDirectory() as name:
        small_pushes(Path(name))
        bulk_pushes(Path(name))
