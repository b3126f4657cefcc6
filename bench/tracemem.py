"""`omnimetrics` with tracemalloc on, for finding what grows over a long run:
`python -m bench.tracemem OUT [--no-heap] serve ...` (the soak's `--trace OUT` runs its
server so; `--no-heap` leaves tracemalloc off: its snapshots stall the process a while).

Every minute it appends to OUT the process's RSS (and by kind of mapping), what the
Python heap holds (traced), what DuckDB's buffer manager holds (`duckdb_memory()`), Arrow's
pool, glibc's malloc (in use, and free but kept in its arenas) and Python's pymalloc
arenas, and from minute 5 on the places whose traced memory grew most since minute 5
(file and line, 4 frames; then summed by file and by line)."""

import ctypes
import os
import re
import sys
import tempfile
import threading
import time
import tracemalloc
import weakref
from pathlib import Path
from typing import Any

import duckdb

import omnimetrics  # noqa: F401  (first: it chooses Arrow's pool before pyarrow is imported)
from bench.stream import rss_kib
from omnimetrics.cli import main
from schemas.db import Database

FRAMES = 4
TOP = 15


_OPENED: "weakref.WeakSet[Database]" = weakref.WeakSet()  # every Database this process opens
_open = Database.__init__


def _opening(self: Database, *args: Any, **kwargs: Any) -> None:
    _open(self, *args, **kwargs)
    _OPENED.add(self)


Database.__init__ = _opening  # type: ignore[method-assign]  # (the app freezes its objects
# out of the collector's sight after start-up, so `gc.get_objects` does not find it)


_HELD = """SELECT tag, memory_usage_bytes FROM duckdb_memory() WHERE memory_usage_bytes > 0
ORDER BY 2 DESC"""
_SIZE = "SELECT memory_usage, wal_size FROM pragma_database_size()"


def _duckdb() -> str:
    """What the server's database's buffer manager holds, by tag (the CLI's start-up check
    opens and closes another Database first: a closed one is skipped)."""
    for db in list(_OPENED):
        try:
            cur = db.cursor()
        except duckdb.Error:
            continue  # closed
        try:
            tags = cur.execute(_HELD).fetchall()
            size, wal = cur.execute(_SIZE).fetchall()[0]
        finally:
            cur.close()
        held = sum(b for _, b in tags) / 2**20
        parts = ", ".join(f"{tag} {b / 2**20:.0f}" for tag, b in tags)
        return f"DuckDB {held:.0f} MiB ({parts}; memory_usage {size}, WAL {wal})"
    return "DuckDB ?"


def _maps() -> str:
    """RSS by kind of mapping: glibc's main heap, anonymous maps (other arenas, jemalloc's,
    mimalloc's, thread stacks), files (libraries, DuckDB's file is read, not mapped)."""
    rss = {"heap": 0, "anonymous": 0, "files": 0}
    kind = "anonymous"
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=6)
            if "-" in first[0] and len(first) >= 5:  # a mapping's header line
                name = first[5].strip() if len(first) > 5 else ""
                kind = (
                    "heap" if name == "[heap]" else "files" if name.startswith("/") else "anonymous"
                )
            elif first[0] == "Rss:":
                rss[kind] += int(first[1])
    return ", ".join(f"{k} {v / 1024:.0f}" for k, v in rss.items())


def _arrow() -> str:
    import pyarrow as pa  # after the server's package has chosen the pool

    pool = pa.default_memory_pool()
    return f"{pool.backend_name} {pool.bytes_allocated() / 2**20:.0f} MiB"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]  # fmt: skip


def _malloc() -> str:
    """What glibc's malloc holds: in use, free inside its arenas, mmapped."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return (f"malloc in use {info.uordblks / 2**20:.0f} MiB, free in arenas "
            f"{info.fordblks / 2**20:.0f} MiB, mmapped {info.hblkhd / 2**20:.0f} MiB")  # fmt: skip


def _pymalloc() -> str:
    """What Python's small-object allocator holds: its arenas, and what is in use in them
    (`sys._debugmallocstats`, which writes to the C stderr)."""
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        stats = f.read().decode()
    arenas = re.search(r"arenas \* \d+ bytes/arena\s+=\s+([\d,]+)", stats)
    used = re.search(r"# bytes in allocated blocks\s+=\s+([\d,]+)", stats)
    if arenas is None or used is None:
        return "pymalloc ?"
    mib = [int(m.group(1).replace(",", "")) / 2**20 for m in (arenas, used)]
    return f"pymalloc arenas {mib[0]:.0f} MiB ({mib[1]:.0f} in use)"


def _watch(out: Path) -> None:
    started = time.monotonic()
    base: tracemalloc.Snapshot | None = None
    while True:
        time.sleep(60)
        minute = (time.monotonic() - started) / 60
        traced, _ = tracemalloc.get_traced_memory()  # 0 when not tracing
        lines = [f"minute {minute:.1f}: RSS {rss_kib(os.getpid()) / 1024:.0f} MiB "
                 f"({_maps()}), Python heap {traced / 2**20:.0f} MiB, {_duckdb()}, "
                 f"Arrow {_arrow()}, {_malloc()}, {_pymalloc()}, "
                 f"threads {threading.active_count()}"]  # fmt: skip
        if tracemalloc.is_tracing() and minute >= 5:
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            if base is None:
                base = snapshot
            for stat in snapshot.compare_to(base, "traceback")[:TOP]:
                where = " <- ".join(f"{f.filename.split('/site-packages/')[-1]}:{f.lineno}"
                                    for f in stat.traceback)  # fmt: skip
                lines.append(f"  {stat.size_diff / 2**20:+.2f} MiB ({stat.count_diff:+,}) {where}")
            for key in ("filename", "lineno"):  # the same, summed by file and by line
                lines.append(f"  by {key}:")
                for stat in snapshot.compare_to(base, key)[:TOP]:
                    frame = stat.traceback[0]
                    where = frame.filename.split("/site-packages/")[-1]
                    where += f":{frame.lineno}" if key == "lineno" else ""
                    lines.append(f"    {stat.size_diff / 2**20:+.2f} MiB "
                                 f"({stat.count_diff:+,}) {where}")  # fmt: skip
        with out.open("a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    out, args = Path(sys.argv[1]), sys.argv[2:]
    if args[:1] == ["--no-heap"]:  # tracemalloc's snapshots stall the process for a while
        args = args[1:]
    else:
        tracemalloc.start(FRAMES)
    threading.Thread(target=_watch, args=(out,), daemon=True).start()
    sys.argv = ["omnimetrics", *args]
    sys.exit(main())
