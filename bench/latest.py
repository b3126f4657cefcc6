"""`GET /api/v1/latest` over 200,000 sessions (issue 11: unfiltered, it took 2.3 s, 35 MB
and +400 MiB RSS): the route's own query and JSON encoding, default `limit` 10,000."""

import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from ingest.writer import Writer
from query.formats import encode
from query.sql import latest_sql, series_where
from schemas.db import Database, arrow
from schemas.models import LatestParams
from schemas.rows import SAMPLE_SCHEMA
from schemas.signals import AppendSignal

SESSIONS = 200_000
UNLABELED = SAMPLE_SCHEMA.remove(SAMPLE_SCHEMA.get_field_index("labels"))


def _table(n: int, at: datetime, value: float) -> pa.Table:
    sessions = np.char.add("s-", np.arange(n).astype(str))
    return pa.Table.from_arrays(
        [
            pa.array(np.full(n, int(at.timestamp() * 1e6)), pa.timestamp("us", tz="UTC")),
            pa.array(np.full(n, "local", dtype=object), pa.string()),
            pa.array(np.full(n, "claude-code", dtype=object), pa.string()),
            pa.array(sessions, pa.string()),
            pa.array(np.full(n, "compression", dtype=object), pa.string()),
            pa.array(np.full(n, "metrics.total_tokens_saved", dtype=object), pa.string()),
            pa.array(np.full(n, "counter", dtype=object), pa.string()),
            pa.array(np.full(n, value)),
        ],
        schema=UNLABELED,
    )


async def _fill(path: Path) -> None:
    db = Database(path)
    writer = Writer(db, AppendSignal())
    await writer.start()
    start = datetime.now(UTC) - timedelta(hours=1)
    for i in range(3):
        await writer.append(_table(SESSIONS, start + timedelta(minutes=i), float(i)))
    await writer.close()
    db.close()


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)


def run() -> None:
    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "l.duckdb"
        asyncio.run(_fill(path))
        db = Database(path, read_only=True)
        params = LatestParams()
        cond, args = series_where(params)
        args["limit"] = params.limit
        before = _rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from now
        times, size = [], 0
        for _ in range(5):
            started = time.perf_counter()
            table = db.read_sync(lambda cur: arrow(cur, latest_sql(cond), args))
            body = encode(table.slice(0, params.limit), "json", lambda r: {"series": r}, "x").body
            times.append(time.perf_counter() - started)
            size = len(body)
        grown = (_rss_kib("VmHWM") - before) / 1024
        db.close()
    print(f"latest over {SESSIONS:,} sessions (unfiltered, default limit 10,000): "
          f"{sorted(times)[2] * 1000:.0f} ms p50, {size / 1e6:.1f} MB answer, peak RSS "
          f"+{grown:.0f} MiB over the queries (0.1.0: 2.3 s, 35 MB, +400 MiB)")  # fmt: skip
