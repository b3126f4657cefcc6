"""`omnimetrics` with tracemalloc on, for finding what grows over a long run:
`python -m bench.tracemem OUT [--no-heap] serve ...` (the soak's `--trace OUT` runs its
server so; `--no-heap` leaves tracemalloc off: its snapshots stall the process a while).

Every minute it appends to OUT the process's RSS, what the Python heap holds (traced),
what DuckDB's buffer manager holds (`duckdb_memory()`), Arrow's pool, glibc's malloc
(in use, and free but kept in its arenas) and Python's pymalloc arenas, and from minute 5
on the places whose traced memory grew most since minute 5 (file and line, 4 frames)."""

import ctypes
import gc
import os
import re
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import duckdb

import omnimetrics  # noqa: F401  (first: it chooses Arrow's pool before pyarrow is imported)
from bench.stream import rss_kib
from omnimetrics.cli import main
from schemas.db import Database

FRAMES = 4
TOP = 15


def _duckdb_mib() -> float | None:
    """What the server's database's buffer manager holds (the CLI's start-up check opens
    and closes another Database first: a closed one is skipped)."""
    for obj in gc.get_objects():
        if isinstance(obj, Database):
            try:
                cur = obj.cursor()
            except duckdb.Error:
                continue  # closed
            try:
                (used,) = cur.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()"
                                      ).fetchall()[0]  # fmt: skip
                return float(used) / 2**20
            finally:
                cur.close()
    return None


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
        lines = [f"minute {minute:.1f}: RSS {rss_kib(os.getpid()) / 1024:.0f} MiB, Python "
                 f"heap {traced / 2**20:.0f} MiB, DuckDB {_duckdb_mib() or 0:.0f} MiB, "
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
