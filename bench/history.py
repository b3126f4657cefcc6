"""Issue 4: history queries over 10M samples, against the old design (SQLite with a delta
column stored at write time) in the same run, and a notebook's first query."""

import asyncio
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from ingest.writer import Writer
from query.history import increase_table
from query.mirror import export_new, mirror_dir
from schemas.db import Database
from schemas.migrations import MIGRATIONS
from schemas.models import SampleFilters
from schemas.rows import SAMPLE_SCHEMA
from schemas.signals import AppendSignal

SOURCES = 500
TENANTS = 5
TOOLS = 10
STEP_S = 60
DAYS = 14
END = datetime(2026, 11, 20, tzinfo=UTC)
START = END - timedelta(days=DAYS)
RUNS = 15
# Rows without labels: the writer gives them the empty label set.
UNLABELED = SAMPLE_SCHEMA.remove(SAMPLE_SCHEMA.get_field_index("labels"))


def days(count: int = DAYS, first: datetime = START) -> Iterator[pa.Table]:
    """One Arrow table per day from `first`, time-ordered; counters restart about every
    two days."""
    rng = np.random.default_rng(7)
    ticks_per_day = 86_400 // STEP_S
    value = np.zeros(SOURCES)
    sources = np.array([f"src{i:03d}" for i in range(SOURCES)], dtype=object)
    tenants = np.array([f"t{i % TENANTS}" for i in range(SOURCES)], dtype=object)
    tools = np.array([f"tool{i % TOOLS}" for i in range(SOURCES)], dtype=object)
    for day in range(count):
        n = ticks_per_day * SOURCES
        base = int((first + timedelta(days=day)).timestamp() * 1e6)
        tick = np.repeat(np.arange(ticks_per_day), SOURCES)
        values = np.empty(n)
        for t in range(ticks_per_day):
            value += rng.integers(0, 50, SOURCES)
            restart = rng.random(SOURCES) < 1 / (2 * ticks_per_day)
            value[restart] = rng.integers(0, 50, restart.sum())
            values[t * SOURCES : (t + 1) * SOURCES] = value
        yield pa.Table.from_arrays(
            [
                pa.array(base + tick * STEP_S * 1_000_000, pa.timestamp("us", tz="UTC")),
                pa.array(np.tile(tenants, ticks_per_day), pa.string()),
                pa.array(np.tile(tools, ticks_per_day), pa.string()),
                pa.nulls(n, pa.string()),
                pa.array(np.tile(sources, ticks_per_day), pa.string()),
                pa.array(np.full(n, "metrics.total_tokens_saved", dtype=object), pa.string()),
                pa.array(np.full(n, "counter", dtype=object), pa.string()),
                pa.array(values),
            ],
            schema=UNLABELED,
        )


async def fill_duckdb(path: Path) -> tuple[int, float, float]:
    db = Database(path)
    writer = Writer(db, AppendSignal())
    await writer.start()
    started, rows = time.perf_counter(), 0
    for table in days():
        for offset in range(0, table.num_rows, 500_000):  # batches of about 17 minutes
            await writer.append(table.slice(offset, 500_000))
        rows += table.num_rows
    elapsed = time.perf_counter() - started
    started = time.perf_counter()
    # As the service does every minute, with "now" where the data ends: rollups cover all
    # but the last two minutes (the grace), which a 24 h question reads raw.
    await writer.refresh_rollups(END)
    rollup_s = time.perf_counter() - started
    await writer.close()
    db.close()
    return rows, elapsed, rollup_s


def fill_long_form(path: Path) -> float:
    """The same rows in wave 1's long form (five strings per sample, in the same run): the
    floor the series model is measured against. Its own migrations (0001, 0002), raw
    Arrow inserts of the same chunks; returns the seconds."""
    con = duckdb.connect(str(path))
    for migration in MIGRATIONS[:2]:  # the long `samples` table and its delta macros
        con.execute(migration.sql)
    seq, batch, started = 1, 1, time.perf_counter()
    for table in days():
        for offset in range(0, table.num_rows, 500_000):
            chunk = table.slice(offset, 500_000)
            n = chunk.num_rows
            chunk = chunk.add_column(0, "seq", pa.array(np.arange(seq, seq + n)))
            chunk = chunk.add_column(1, "batch", pa.array(np.full(n, batch)))
            con.register("incoming", chunk)
            con.execute("INSERT INTO samples SELECT * FROM incoming")
            con.unregister("incoming")
            seq, batch = seq + n, batch + 1
    elapsed = time.perf_counter() - started
    con.execute("CHECKPOINT")
    con.close()
    return elapsed


def file_bytes(path: Path) -> int:
    return path.stat().st_size + (Path(f"{path}.wal").stat().st_size
                                  if Path(f"{path}.wal").exists() else 0)  # fmt: skip


def fill_sqlite(path: Path) -> float:
    """The old design: the delta is computed and stored at write time (and goes negative
    on a restart, which is the bug this service exists to fix)."""
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE metrics (ts INTEGER, tenant_id TEXT, tool_id TEXT, source TEXT, "
        "metric TEXT, value REAL, delta REAL)"
    )
    con.execute("CREATE INDEX metrics_ts ON metrics (ts)")
    started = time.perf_counter()
    last: dict[str, float] = {}
    for table in days():
        cols = table.to_pydict()
        rows = []
        columns = (cols["ts"], cols["tenant_id"], cols["tool_id"], cols["source"], cols["value"])
        for ts, tenant, tool, source, value in zip(*columns, strict=True):
            prev = last.get(source)
            last[source] = value
            rows.append((int(ts.timestamp()), tenant, tool, source, "m", value,
                         None if prev is None else value - prev))  # fmt: skip
        con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        con.commit()
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


def timed(fn: Callable[[], object], runs: int = RUNS) -> float:
    fn()  # warm
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


METRIC = SampleFilters(metric="metrics.total_tokens_saved")
SQLITE_24H = """
SELECT tenant_id, ts / 3600 AS hour, sum(delta) FROM metrics
WHERE ts >= ? AND ts < ? AND metric = 'm' GROUP BY 1, 2
"""
SQLITE_ALL = "SELECT tool_id, ts / 86400 AS day, sum(delta) FROM metrics GROUP BY 1, 2"

NOTEBOOK = """
import sys, time
started = time.perf_counter()
from query import connect
con = connect(sys.argv[1])
day = "TIMESTAMPTZ '2026-11-19 00:00:00+00', TIMESTAMPTZ '2026-11-20 00:00:00+00'"
con.sql("SELECT tenant_id, time_bucket(INTERVAL 1 HOUR, ts), sum(delta) FROM "
        f"sample_deltas_between({day}) GROUP BY ALL").fetchall()
print(time.perf_counter() - started)
"""


RAW_DAY = """
SELECT count(*), sum(delta) FROM {macro}(TIMESTAMPTZ '{a}', TIMESTAMPTZ '{b}',
                                         lookback := INTERVAL 5 MINUTE)
"""


def raw_window(path: Path, macro: str) -> float:
    """A raw 24 h delta window (no rollups), p50 ms, on its own connection."""
    con = duckdb.connect(str(path), read_only=True)
    a, b = END - timedelta(days=1), END
    sql = RAW_DAY.format(macro=macro, a=a.isoformat(), b=b.isoformat())
    try:
        return timed(lambda: con.execute(sql).fetchall(), runs=5)
    finally:
        con.close()


def storage(tmp: Path, rows: int, long_path: Path) -> None:
    path = tmp / "h.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CHECKPOINT")
    con.close()
    mirror = sum(f.stat().st_size for f in mirror_dir(path).rglob("*.parquet"))
    ours, long = file_bytes(path) / rows, file_bytes(long_path) / rows
    print(f"  storage: DuckDB file {ours:.2f} B/sample after CHECKPOINT (target <= 8; the long "
          f"form, same rows, {long:.2f}); Parquet mirror {mirror / rows:.2f} B/sample "
          "(target <= 6)")  # fmt: skip


def run() -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        rows, write_s, rollup_s = asyncio.run(fill_duckdb(tmp / "h.duckdb"))
        long_s = fill_long_form(tmp / "long.duckdb")
        sqlite_write_s = fill_sqlite(tmp / "h.sqlite")
        print(f"history: {rows:,} samples, {SOURCES} sources, {DAYS} days at {STEP_S} s")
        old = f"SQLite (old design) {sqlite_write_s:.1f} s"
        print(f"  written in {write_s:.1f} s through the writer ({rows / write_s / 1e6:.2f}M "
              f"rows/s, series resolved); {old}")  # fmt: skip
        print(f"  wave 1's long form, raw Arrow inserts of the same rows: {long_s:.1f} s "
              f"({rows / long_s / 1e6:.2f}M rows/s); writer/long form {long_s / write_s:.2f}x "
              "(target >= 1x)")  # fmt: skip
        print(f"  first rollup of {DAYS} days, through the writer: {rollup_s:.1f} s")
        ours_raw = raw_window(tmp / "h.duckdb", "point_deltas_between")
        long_raw = raw_window(tmp / "long.duckdb", "sample_deltas_between")
        print(
            f"  raw 24 h delta window: {ours_raw:.1f} ms p50 by series id; long form "
            f"{long_raw:.1f} ms; {long_raw / ours_raw:.1f}x faster (target >= 2x)"
        )
        db = Database(tmp / "h.duckdb", read_only=True)
        span = {"start": END - timedelta(days=1), "end": END}
        # The same path as GET /api/v1/increase: rollups for closed hours, raw rows beyond.
        day = partial(increase_table, filters=METRIC, labels=["tenant_id"],
                      start=span["start"], end=span["end"], step=3600)  # fmt: skip
        whole = partial(increase_table, filters=METRIC, labels=["tool_id"],
                        start=START, end=END, step=86_400)  # fmt: skip
        duck_24h = timed(lambda: db.read_sync(day))
        duck_all = timed(lambda: db.read_sync(whole))
        lite = sqlite3.connect(tmp / "h.sqlite")
        bounds = (int(span["start"].timestamp()), int(span["end"].timestamp()))
        lite_24h = timed(lambda: lite.execute(SQLITE_24H, bounds).fetchall())
        lite_all = timed(lambda: lite.execute(SQLITE_ALL).fetchall(), runs=3)
        print(f"  24 h by hour per tenant: {duck_24h:.1f} ms p50 (target <= 25); "
              f"SQLite {lite_24h:.1f} ms; SQLite/omnimetrics {lite_24h / duck_24h:.1f}x "
              "(target >= 25x)")  # fmt: skip
        print(f"  whole history by day per tool: {duck_all:.1f} ms p50 (target <= 100); "
              f"SQLite {lite_all:.1f} ms")  # fmt: skip
        export_new(db.cursor(), mirror_dir(db.path), db.epoch)
        db.close()
        storage(tmp, rows, tmp / "long.duckdb")
        firsts = []
        for _ in range(3):
            done = subprocess.run([sys.executable, "-c", NOTEBOOK, str(tmp / "h.duckdb")],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            firsts.append(float(done.stdout))
        print(
            f"  query.connect() + first 24 h query, fresh process: "
            f"{statistics.median(firsts) * 1000:.0f} ms (target <= 1000)"
        )
