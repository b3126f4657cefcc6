"""The Parquet mirror that analysts read while the service writes.

DuckDB lets no other process open a file a writer holds, and a reader holding it would
block the writer's restart. So the service copies every new sample to Parquet files beside
the database, one per hour of sample time, and lists them in `meta.json` with how far it
got (`<db>.parquet/meta.json`, `<db>.parquet/points/day=YYYY-MM-DD/HH-<seq>.parquet`). The
points are narrow (seq, batch, ts, series_id, kind, value), as in the database; every
series they refer to is in one file, `series/series-<count>.parquet`, written anew (under
a new name) when an export brings new series.

A file never changes once written: DuckDB opens a file by its path several times in one
query (for its footer, then for the data), so a file replaced under it mixes two
versions ("TProtocolException: Invalid data"). An export that adds rows to an hour writes
that hour anew under a new name (the old rows plus the new), then lists it in `meta.json`
in place of the old one (one atomic rename). Readers take the list from `meta.json`, so
they see each row exactly once; a file no longer listed is deleted `GRACE_SECONDS` later,
when no query that read the old list can still be opening it. The mirror lists 24 files a
day however often it exports.
"""

import asyncio
import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.db import Database, arrow
from schemas.outcomes import Outcome
from schemas.retention import cutoffs
from schemas.rollups import HOUR
from schemas.times import rfc3339, utcnow

CHUNK_ROWS = 1_000_000
# 4: narrow points by hour plus one series file (the series model); 3: immutable long-form
# hour files listed in meta.json; 2 rewrote HH.parquet in place; 1: file per export
LAYOUT = 4
GRACE_SECONDS = 600.0
_NEW = """
SELECT seq, batch, ts, series_id, kind, value
FROM points WHERE seq > $after AND seq <= $upto ORDER BY seq
"""
_SERIES = "SELECT * FROM series_keys ORDER BY id"
_SERIES_COUNT = "SELECT count(*) FROM series_keys"
_TENANT_SERIES = "SELECT id FROM series_keys WHERE tenant_id = $t"
# Sizes per sample (BENCHMARKS.md): sorted integers delta-encode to a few bits, doubles
# split by byte compress far better under zstd, and a handful of kinds is a dictionary.
_PARQUET: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": ["series_id", "kind"],
    "column_encoding": {
        "seq": "DELTA_BINARY_PACKED",
        "batch": "DELTA_BINARY_PACKED",
        "ts": "DELTA_BINARY_PACKED",
        "value": "BYTE_STREAM_SPLIT",
    },
}


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


def _append_hour(old: Path | None, rows: pa.Table, done: int, new: Path) -> None:
    """Write `new`: the hour's rows from `old` plus `rows`. Rows after `done` already in
    `old` came from an export that stopped before recording its progress: they are in
    `rows` again."""
    if old is not None and old.exists():
        previous = pq.read_table(old, schema=rows.schema)
        kept = previous.filter(pc.less_equal(previous.column("seq"), done))
        rows = pa.concat_tables([kept, rows])
    _write_atomically(new, partial(pq.write_table, rows, **_PARQUET))


def listed_files(mirror: Path, meta: dict[str, object] | None = None) -> list[Path]:
    """The points files that hold the mirror now, one per hour, as `meta.json` lists them."""
    names = (read_meta(mirror) if meta is None else meta).get("files", [])
    return [mirror / "points" / str(name) for name in names] if isinstance(names, list) else []


def listed_series(mirror: Path, meta: dict[str, object] | None = None) -> Path | None:
    """The file of every series the listed points refer to, as `meta.json` names it."""
    name = (read_meta(mirror) if meta is None else meta).get("series")
    return mirror / "series" / str(name) if isinstance(name, str) else None


def _export_series(
    cur: duckdb.DuckDBPyConnection, mirror: Path, meta: dict[str, object]
) -> tuple[str | None, int]:
    """The series file to list (written anew when there are new series) and its count."""
    (count,) = cur.execute(_SERIES_COUNT).fetchall()[0]
    name, known = meta.get("series"), int(str(meta.get("series_count", 0)))
    if count == known and isinstance(name, str):
        return name, known
    folder = mirror / "series"
    folder.mkdir(parents=True, exist_ok=True)
    new = f"series-{count:012d}.parquet"
    table = arrow(cur, _SERIES, {})
    _write_atomically(folder / new, partial(pq.write_table, table, compression="zstd"))
    if isinstance(name, str) and name != new:
        _retire(folder / name)
    return new, int(count)


def export_new(
    cur: duckdb.DuckDBPyConnection, mirror: Path, epoch: str, grace: float = GRACE_SECONDS
) -> int:
    """Append samples committed since the last export and drop what retention deleted;
    returns the seq now mirrored. Files no longer listed for `grace` seconds are deleted."""
    meta = read_meta(mirror)
    if meta.get("epoch") != epoch or meta.get("layout") != LAYOUT:
        # Another database, or files of an older layout: build the mirror again.
        shutil.rmtree(mirror, ignore_errors=True)
        meta = {}
    done = int(str(meta.get("seq", 0)))
    by_hour = {_hour_of(path.name, path.parent.name): path for path in listed_files(mirror, meta)}
    cur.begin()  # the series file and the points it must cover, from one snapshot
    try:
        (head,) = cur.execute("SELECT coalesce(max(seq), 0) FROM points").fetchall()[0]
        series, series_count = _export_series(cur, mirror, meta) if done < head else (
            meta.get("series"), int(str(meta.get("series_count", 0))))  # fmt: skip
        record = {"epoch": epoch, "layout": LAYOUT, "series": series,
                  "series_count": series_count, "pruned": meta.get("pruned", {})}  # fmt: skip
        done = _export_points(cur, mirror, done, head, by_hour, record)
        if _expire(cur, mirror, done, by_hour, record):
            _write_record(mirror, done, by_hour, record)
    finally:
        cur.commit()
    _delete_unlisted(mirror, {*by_hour.values(), *_listed_series(mirror)}, grace)
    return done


def _expire(
    cur: duckdb.DuckDBPyConnection,
    mirror: Path,
    done: int,
    by_hour: dict[tuple[str, str], Path],
    record: dict[str, Any],
) -> bool:
    """Unlist the hours before the raw cutoff, and write anew without a tenant's rows the
    hours before its own later cutoff (once per hour and cutoff: `record["pruned"]`);
    True if anything changed."""
    cut = cutoffs(cur)
    changed = False
    for key, path in list(by_hour.items()):
        if _hour_start(key) + HOUR <= cut.raw:
            del by_hour[key]
            _retire(path)
            changed = True
    pruned: dict[str, int] = dict(record["pruned"])
    for tenant_id, cutoff in cut.tenants.items():
        since = max(pruned.get(tenant_id, 0), cut.raw)
        if since >= cutoff:
            continue
        ids = pa.array([i for (i,) in cur.execute(_TENANT_SERIES, {"t": tenant_id}).fetchall()],
                       pa.int64())  # fmt: skip
        before = pa.scalar(datetime.fromtimestamp(cutoff, UTC), pa.timestamp("us", tz="UTC"))
        for key, path in sorted(by_hour.items()):
            if not since <= _hour_start(key) < cutoff:
                continue
            table = pq.read_table(path)
            theirs = pc.is_in(table.column("series_id"), value_set=ids)
            gone = pc.and_(theirs, pc.less(table.column("ts"), before))
            if not pc.any(gone).as_py():
                continue
            new = path.with_name(f"{key[1]}-{done:020d}-{tenant_id}-{cutoff}.parquet")
            _write_atomically(new, partial(pq.write_table, table.filter(pc.invert(gone)),
                                           **_PARQUET))  # fmt: skip
            by_hour[key] = new
            _retire(path)
        pruned[tenant_id] = cutoff
        changed = True
    record["pruned"] = pruned
    return changed


def _hour_start(key: tuple[str, str]) -> int:
    day, hh = key
    return int(datetime.strptime(f"{day.removeprefix('day=')} {hh}", "%Y-%m-%d %H")
               .replace(tzinfo=UTC).timestamp())  # fmt: skip


def _listed_series(mirror: Path) -> list[Path]:
    path = listed_series(mirror)
    return [path] if path is not None else []


def _export_points(
    cur: duckdb.DuckDBPyConnection,
    mirror: Path,
    done: int,
    head: int,
    by_hour: dict[tuple[str, str], Path],
    record: dict[str, Any],
) -> int:
    samples = mirror / "points"
    while done < head:
        upto = min(head, done + CHUNK_ROWS)
        table = arrow(cur, _NEW, {"after": done, "upto": upto})
        table = table.set_column(2, "ts", table.column("ts").cast(pa.timestamp("us", tz="UTC")))
        hours = pc.strftime(table.column("ts"), format="%Y-%m-%d/%H")
        for hour in pc.unique(hours).to_pylist():
            day, hh = hour.split("/")
            folder = samples / f"day={day}"
            folder.mkdir(parents=True, exist_ok=True)
            new = folder / f"{hh}-{upto:020d}.parquet"
            old = by_hour.get((folder.name, hh))
            _append_hour(old, table.filter(pc.equal(hours, hour)), done, new)
            by_hour[(folder.name, hh)] = new
            if old is not None and old != new:
                _retire(old)
        done = upto
        _write_record(mirror, done, by_hour, record)
    return done


def _write_record(
    mirror: Path, done: int, by_hour: dict[tuple[str, str], Path], record: dict[str, Any]
) -> None:
    """List the files in `meta.json` (one atomic rename), with how far the export got."""
    samples = mirror / "points"
    files = sorted(str(path.relative_to(samples)) for path in by_hour.values())
    doc = {**record, "seq": done, "exported_at": rfc3339(utcnow()), "files": files}
    mirror.mkdir(parents=True, exist_ok=True)
    _write_atomically(mirror / "meta.json", partial(_write_text, json.dumps(doc)))


def _hour_of(name: str, day: str) -> tuple[str, str]:
    return day, name.split("-", 1)[0]


def _retire(path: Path) -> None:
    """Start a superseded file's grace period now (it may have been written long ago)."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def _delete_unlisted(mirror: Path, listed: set[Path], grace: float) -> None:
    """Delete files (superseded, expired, or left by an export that died) unlisted for
    `grace` s, and day folders left empty."""
    cutoff = time.time() - grace
    for path in [*mirror.glob("points/day=*/*"), *mirror.glob("series/*")]:
        if path in listed:
            continue
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
    for folder in mirror.glob("points/day=*"):
        with contextlib.suppress(OSError):  # not empty (or gone): kept
            folder.rmdir()


async def keep_mirror(db: Database, interval: float, outcome: Outcome | None = None) -> None:
    """Export new samples every `interval` seconds until cancelled; a failure is recorded
    in `outcome` (for `/health` and the log) and retried next time, never fatal."""
    mirror = mirror_dir(db.path)
    outcome = outcome if outcome is not None else Outcome(f"the export to {mirror}")
    while True:
        try:
            await db.read(partial(export_new, mirror=mirror, epoch=db.epoch))
        except Exception as exc:
            outcome.failed(exc)
        else:
            outcome.succeeded()
        await asyncio.sleep(interval)
