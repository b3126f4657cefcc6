"""Process-wide memory settings, applied at startup before any thread starts."""

import ctypes
import os
import sys
from collections.abc import MutableMapping

M_ARENA_MAX = -8  # glibc's mallopt parameter
ARENAS = 2
ARROW_POOL = "jemalloc"


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Let glibc's malloc use at most `arenas` arenas, as `MALLOC_ARENA_MAX` would
    (`OMNIMETRICS_MALLOC_ARENAS`; 0 leaves glibc's own choice, and its environment).

    glibc gives a thread that finds the arenas busy one of its own (up to 8 per core), and
    memory freed in one arena is not reused by another. With the database's and the
    stream's worker threads, a soak's RSS grew 20-28% in 15 minutes while the Python heap
    stayed flat (tracemalloc); with two arenas it grew less than half as fast, from less.
    False where nothing was set: no glibc, 0, or glibc refused."""
    if not arenas or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not glibc (musl has no arenas to limit)
        return False


def choose_arrow_pool(environ: MutableMapping[str, str] = os.environ) -> None:
    """Put Arrow's buffers on jemalloc unless `ARROW_DEFAULT_MEMORY_POOL` names another
    pool (Arrow reads it once, so this runs before pyarrow is imported: the package's
    `__init__`, which every entry point imports first; on Linux, where it was measured).

    On pyarrow's default, mimalloc, a 20-minute soak's RSS grew 25% from minute 5 to the
    end, all of it in mimalloc's reserved region while Arrow's count of what it held stayed
    at 1-3 MiB: the freed buffers of stream pages, made in worker threads and dropped on
    the event loop, were kept. On jemalloc the same soak grew +6.3%, flat from minute 12
    (BENCHMARKS.md)."""
    if sys.platform.startswith("linux"):
        environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", ARROW_POOL)
