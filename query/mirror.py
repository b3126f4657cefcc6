"""The Parquet mirror that analysts read while the service writes.

DuckDB lets no other process open a file a writer holds, and a reader holding it would
block the writer's restart. So the service copies every new sample to Parquet files beside
the database, one per hour of sample time (`<db>.parquet/samples/day=YYYY-MM-DD/HH.parquet`),
and records how far it got in `meta.json`.

An export rewrites the hours it adds to: the old rows plus the new, written under a
temporary name and renamed over the file. A reader sees the old file or the new one
whole, never neither and never both, so no row is missing or counted twice while the
service writes; and the mirror holds 24 files a day however often it exports.
"""

import asyncio
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.db import Database, arrow
from schemas.times import rfc3339, utcnow

log = logging.getLogger("omnimetrics.query")

CHUNK_ROWS = 1_000_000
LAYOUT = 2  # one file per hour; layout 1 had one file per export
_NEW = """
SELECT seq, batch, ts, tenant_id, tool_id, session_id, source, metric, kind, value
FROM samples WHERE seq > $after AND seq <= $upto ORDER BY seq
"""


def mirror_dir(db_path: str | Path) -> Path:
    return Path(f"{db_path}.parquet")


def read_meta(mirror: Path) -> dict[str, object]:
    try:
        meta: dict[str, object] = json.loads((mirror / "meta.json").read_text())
        return meta
    except (OSError, ValueError):
        return {}


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_text(text: str, path: Path) -> None:
    path.write_text(text)


def _append_hour(path: Path, rows: pa.Table, done: int) -> None:
    """Rewrite one hour's file with `rows` added. Rows after `done` already in it came
    from an export that stopped before recording its progress: they are in `rows` again."""
    if path.exists():
        old = pq.read_table(path, schema=rows.schema)
        rows = pa.concat_tables([old.filter(pc.less_equal(old.column("seq"), done)), rows])
    _write_atomically(path, partial(pq.write_table, rows))


def export_new(cur: duckdb.DuckDBPyConnection, mirror: Path, epoch: str) -> int:
    """Append samples committed since the last export; returns the seq now mirrored."""
    meta = read_meta(mirror)
    if meta.get("epoch") != epoch or meta.get("layout") != LAYOUT:
        # Another database, or files of an older layout: build the mirror again.
        shutil.rmtree(mirror, ignore_errors=True)
        meta = {}
    done = int(str(meta.get("seq", 0)))
    (head,) = cur.execute("SELECT coalesce(max(seq), 0) FROM samples").fetchall()[0]
    while done < head:
        upto = min(head, done + CHUNK_ROWS)
        table = arrow(cur, _NEW, {"after": done, "upto": upto})
        table = table.set_column(2, "ts", table.column("ts").cast(pa.timestamp("us", tz="UTC")))
        hours = pc.strftime(table.column("ts"), format="%Y-%m-%d/%H")
        for hour in pc.unique(hours).to_pylist():
            day, hh = hour.split("/")
            folder = mirror / "samples" / f"day={day}"
            folder.mkdir(parents=True, exist_ok=True)
            _append_hour(folder / f"{hh}.parquet", table.filter(pc.equal(hours, hour)), done)
        done = upto
        record = {"epoch": epoch, "layout": LAYOUT, "seq": done, "exported_at": rfc3339(utcnow())}
        mirror.mkdir(parents=True, exist_ok=True)
        _write_atomically(mirror / "meta.json", partial(_write_text, json.dumps(record)))
    return done


async def keep_mirror(db: Database, interval: float) -> None:
    """Export new samples every `interval` seconds until cancelled; failures are logged
    and retried next time, never fatal to the service."""
    mirror = mirror_dir(db.path)
    while True:
        try:
            await db.read(partial(export_new, mirror=mirror, epoch=db.epoch))
        except Exception:
            log.exception("could not export samples to %s; retrying", mirror)
        await asyncio.sleep(interval)
