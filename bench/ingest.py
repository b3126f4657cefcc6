"""Issue 2: bulk append through the writer, and a 200-source collection tick."""

import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import aiohttp
import duckdb
import httpx
import numpy as np
import pyarrow as pa

from ingest.collector import Collector, http_client
from ingest.jobs import CollectionJobs
from ingest.sources import Source
from ingest.writer import Writer
from schemas.db import Database
from schemas.labels import NO_LABELS
from schemas.migrations import MIGRATIONS
from schemas.rows import SAMPLE_SCHEMA
from schemas.signals import AppendSignal

ROWS_PER_BATCH = 500_000
BATCHES = 6
SOURCES = 200
TICKS = 30
INTERVAL = 1.0


def sample_table(n: int, offset: int) -> pa.Table:
    base = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1e6) + offset
    i = np.arange(n)
    return pa.Table.from_arrays(
        [
            pa.array(base + i * 1000, pa.timestamp("us", tz="UTC")),
            pa.array(np.full(n, "local", dtype=object), pa.string()),
            pa.array(np.where(i % 3 == 0, "claude-code", None), pa.string()),
            pa.nulls(n, pa.string()),
            pa.array(np.char.add("src", (i % SOURCES).astype(str)), pa.string()),
            pa.array(np.char.add("metrics.m", (i % 25).astype(str)), pa.string()),
            pa.array(np.full(n, "counter", dtype=object), pa.string()),
            pa.array(i.astype(np.float64)),
            pa.array(np.full(n, NO_LABELS, dtype=object), pa.string()),
        ],
        schema=SAMPLE_SCHEMA,
    )


def bare_insert_rate(path: Path, tables: list[pa.Table]) -> float:
    """Baseline: the same Arrow rows into the same table shape, no writer in between."""
    con = duckdb.connect(str(path), config={"threads": 2})
    con.execute(MIGRATIONS[0].sql)
    elapsed = 0.0
    seq = 1
    for table in tables:
        n = table.num_rows
        full = table.add_column(0, "seq", pa.array(np.arange(seq, seq + n))).add_column(
            1, "batch", pa.array(np.full(n, 1))
        )
        seq += n
        started = time.perf_counter()
        con.begin()
        con.register("t", full)
        con.execute(
            "INSERT INTO samples SELECT seq, batch, ts, tenant_id, tool_id, session_id, "
            "source, metric, kind, value FROM t"
        )
        con.commit()
        elapsed += time.perf_counter() - started
        con.unregister("t")
    con.close()
    return sum(t.num_rows for t in tables) / elapsed


async def writer_rate(path: Path, tables: list[pa.Table]) -> float:
    db = Database(path)
    writer = Writer(db, AppendSignal())
    await writer.start()
    started = time.perf_counter()
    for table in tables:
        await writer.append(table)
    elapsed = time.perf_counter() - started
    await writer.close()
    db.close()
    return sum(t.num_rows for t in tables) / elapsed


async def bench_append(tmp: Path) -> None:
    tables = [sample_table(ROWS_PER_BATCH, k * ROWS_PER_BATCH) for k in range(BATCHES)]
    bare = bare_insert_rate(tmp / "bare.duckdb", tables)
    through = await writer_rate(tmp / "writer.duckdb", tables)
    print(f"append: {BATCHES} Arrow batches of {ROWS_PER_BATCH:,} rows")
    print(f"  bare DuckDB insert (baseline): {bare:12,.0f} rows/s")
    print(f"  through the writer:            {through:12,.0f} rows/s")
    print(f"  ratio writer/bare: {through / bare:.2f} (target >= 0.50)")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def upstream_process() -> Iterator[int]:
    """The 200 upstreams in their own process, as real upstreams would be; yields the port."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.upstreams", "--port", str(port)], stdout=subprocess.DEVNULL
    )
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait()


async def bench_tick(tmp: Path, port: int) -> None:
    async with http_client(SOURCES) as client:
        for _ in range(100):
            try:
                async with client.get(f"http://127.0.0.1:{port}/stats/0") as response:
                    await response.read()
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        sources = [
            Source(f"s{i}", f"http://127.0.0.1:{port}/stats/{i}", timeout_seconds=2.0)
            for i in range(SOURCES)
        ]
        db = Database(tmp / "tick.duckdb")
        writer = Writer(db, AppendSignal())
        await writer.start()
        jobs = CollectionJobs(Collector(client, sources), writer, {"local": INTERVAL})
        await jobs.tick("local")  # warm the connection pool
        durations, failed = [], 0
        for _ in range(TICKS):
            started = time.perf_counter()
            await jobs.tick("local")
            durations.append(time.perf_counter() - started)
            await asyncio.sleep(max(0.0, INTERVAL - (time.perf_counter() - started)))
        failed = db.read_sync(
            lambda c: c.execute("SELECT count(*) FROM scrapes WHERE NOT up").fetchall()
        )[0][0]
        rows = writer.last_seq
        await writer.close()
        db.close()
        # Baselines: the same GETs through the same session with nothing parsed or
        # written, and through httpx's own connection pool.
        raw = await _fetch_times(partial(_aiohttp_get, client), sources)
    size = 2 * SOURCES
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    async with httpx.AsyncClient(limits=limits) as native:
        await asyncio.gather(*(native.get(s.url) for s in sources))
        native_raw = await _fetch_times(native.get, sources)
    durations.sort()
    p50 = statistics.median(durations)
    p99 = durations[min(len(durations) - 1, int(0.99 * len(durations)))]
    print(f"tick: {SOURCES} JSON sources in a separate process, {TICKS} ticks at {INTERVAL:g} s")
    print(f"  p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {durations[-1] * 1000:.0f} ms")
    print(f"  p99 / interval: {p99 / INTERVAL:.2f} (target < 0.50); failed scrapes: {failed}")
    print(f"  rows written: {rows:,}")
    raw_p50, native_p50 = statistics.median(raw), statistics.median(native_raw)
    print(f"  the same {SOURCES} GETs alone, same client: p50 {raw_p50 * 1000:.0f} ms; "
          f"through httpx's own pool: p50 {native_p50 * 1000:.0f} ms")  # fmt: skip
    print(f"  tick p50 / bare fetch p50: {p50 / raw_p50:.2f}; "
          f"httpx pool / our session: {native_p50 / raw_p50:.1f}x")  # fmt: skip


async def _aiohttp_get(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as response:
        return await response.read()


async def _fetch_times(
    get: Callable[[str], Awaitable[object]], sources: list[Source]
) -> list[float]:
    times = []
    for _ in range(10):
        started = time.perf_counter()
        await asyncio.gather(*(get(s.url) for s in sources))
        times.append(time.perf_counter() - started)
        await asyncio.sleep(0.2)
    return times


async def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await bench_append(Path(tmp))
        with upstream_process() as port:
            await bench_tick(Path(tmp), port)
