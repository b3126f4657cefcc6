"""[W2 3/5]: one client catching up from the database over WebSocket, through `omnimetrics
serve` as the CLI runs it, beside the same rows read from DuckDB alone in the same run.

- Small batches: 100,000 pushes of one sample each (each its own batch), stored through
  the writer (group commit: concurrent pushes share transactions); a client resumes from
  before the first and receives every batch (target: all in <= 2 s).
- Wide batches: 50 ticks of 20,000 samples; the client's rows per second (target >= 1M).
"""

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pyarrow as pa
from websockets.asyncio.client import connect

from bench.scrape import cpu_seconds
from bench.stream import free_port, process, wait_http
from ingest.writer import Writer
from schemas.db import Database
from schemas.rows import SAMPLE_SCHEMA, SampleRow
from schemas.signals import AppendSignal

SMALL = 100_000
WIDE_TICKS, WIDE_ROWS = 50, 20_000
_T0 = 1_795_000_000_000_000  # microseconds


async def store_small(path: Path, count: int) -> list[int]:
    """`count` pushes of one sample each (each its own batch), through the writer (group
    commit: concurrent pushes share transactions); the last seq of each batch."""
    db = Database(path)
    writer = Writer(db, AppendSignal())
    await writer.start()
    start = datetime(2026, 11, 20, tzinfo=UTC)
    for chunk in range(0, count, 2_000):
        await asyncio.gather(*(
            writer.append_events([(None, [SampleRow(
                start + timedelta(milliseconds=10 * i), "local", "t", None, f"s{i % 5}",
                "total", "counter", float(i))])])
            for i in range(chunk, min(count, chunk + 2_000))
        ))  # fmt: skip
    await writer.close()
    ends = [e for (e,) in db.cursor().execute(
        "SELECT max(seq) FROM points GROUP BY batch ORDER BY 1").fetchall()]  # fmt: skip
    db.close()
    return ends


async def _small(path: Path) -> int:
    return (await store_small(path, SMALL))[-1]


async def _wide(path: Path) -> int:
    db = Database(path)
    writer = Writer(db, AppendSignal())
    await writer.start()
    n = WIDE_ROWS
    for k in range(WIDE_TICKS):
        table = pa.Table.from_arrays([
            pa.array(np.full(n, _T0 + k * 1_000_000), pa.timestamp("us", tz="UTC")),
            pa.array(["local"] * n), pa.array(["t"] * n), pa.nulls(n, pa.string()),
            pa.array([f"s{i // 50}" for i in range(n)]), pa.array([f"m{i % 50}" for i in range(n)]),
            pa.array(["counter"] * n), pa.array(np.arange(n, dtype=np.float64) + k),
            pa.array(["{}"] * n),
        ], schema=SAMPLE_SCHEMA)  # fmt: skip
        await writer.append(table)
    last = writer.last_seq
    await writer.close()
    db.close()
    return last


def _sql_floor(path: Path) -> float:
    """The same rows and their series read from DuckDB as Arrow, nothing else: seconds."""
    con = duckdb.connect(str(path), read_only=True)
    started = time.perf_counter()
    con.sql(
        "SELECT p.*, k.name, k.source FROM points p JOIN series_keys k ON k.id = p.series_id"
    ).to_arrow_table()
    took = time.perf_counter() - started
    con.close()
    return took


async def _receive(url: str, last: int) -> tuple[float, int, int, float]:
    """Connect from before the first batch; seconds until the last batch, messages, rows,
    and this client's own CPU seconds meanwhile (it shares the two cores)."""
    messages = rows = 0
    started = time.perf_counter()
    async with connect(url, max_size=None) as ws:
        epoch = orjson.loads(await ws.recv())["cursor"].split(":")[0]
    async with connect(f"{url}?since={epoch}:0", max_size=None) as ws:
        started, cpu = time.perf_counter(), time.process_time()
        seen = 0
        async for text in ws:
            message = orjson.loads(text)
            if message["type"] != "metrics":
                continue
            messages += 1
            rows += sum(len(metrics) for metrics in message["data"].values())
            assert message["seq"] > seen
            seen = message["seq"]
            if seen >= last:
                break
    return time.perf_counter() - started, messages, rows, time.process_time() - cpu


@contextlib.contextmanager
def _serve(path: Path) -> Iterator[str]:
    port = free_port()
    config = path.parent / "catchup.toml"
    config.write_text("sources = []\n")
    with process("-m", "omnimetrics.cli", "serve", "--port", str(port), "--db", str(path),
                 "--config", str(config)) as proc:  # fmt: skip
        wait_http(f"http://127.0.0.1:{port}/health")
        _wait_quiet(proc.pid)
        yield f"ws://127.0.0.1:{port}/ws/metrics"


def _wait_quiet(pid: int, seconds: float = 60) -> None:
    """Until the server is idle (under 5% of a core for half a second): a server started
    on a database it has not mirrored yet first writes the Parquet mirror of all of it,
    and the catch-up is measured on its own, not beside that."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            return


def run() -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        print("catch-up: one WebSocket client resuming from before the first batch")
        for label, build, path in (
            (f"{SMALL:,} batches of one sample", _small, tmp / "small.duckdb"),
            (f"{WIDE_TICKS} batches of {WIDE_ROWS:,} samples", _wide, tmp / "wide.duckdb"),
        ):
            last = asyncio.run(build(path))
            floor = _sql_floor(path)
            with _serve(path) as url:
                took, messages, rows, client_cpu = asyncio.run(_receive(url, last))
            print(
                f"  {label}: all {messages:,} messages ({rows:,} rows) in {took:.2f} s: "
                f"{messages / took:,.0f} batches/s, {rows / took:,.0f} rows/s; the same rows "
                f"read from DuckDB alone: {floor * 1000:.0f} ms ({rows / floor:,.0f} rows/s); "
                f"the client's own CPU meanwhile {client_cpu:.2f} s"
            )
        print("  targets: 100,000 small batches in <= 2 s; wide batches >= 1M rows/s")
