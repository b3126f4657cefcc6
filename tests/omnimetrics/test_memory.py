"""The server limits glibc's malloc arenas, so memory freed by one thread is reused by
the others (a long run's RSS grew 20-28% without it), and puts Arrow's buffers on
jemalloc, which gave a long run's freed memory back where mimalloc kept it."""

import subprocess
import sys

import pytest

from omnimetrics.memory import limit_malloc_arenas

# Sixteen threads malloc and free at once (ctypes releases the GIL), then glibc lists its
# arenas on stderr.
_CONTEND = """
import ctypes, sys, threading
from omnimetrics.memory import limit_malloc_arenas
if sys.argv[1] == "limit":
    assert limit_malloc_arenas()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def churn():
    for _ in range(20_000):
        libc.free(libc.malloc(4096))
threads = [threading.Thread(target=churn) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
libc.malloc_stats()
"""


def _arenas(mode: str) -> int:
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_ARENA_MAX of the caller's either
    done = subprocess.run([sys.executable, "-c", _CONTEND, mode], capture_output=True,
                          text=True, timeout=60, env=env, check=True)  # fmt: skip
    return done.stderr.count("Arena ")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_threads_share_two_malloc_arenas() -> None:
    assert _arenas("limit") <= 2
    assert _arenas("default") > 2  # the contention is real: without the limit, more


def test_no_limit_is_glibcs_own_choice() -> None:
    assert limit_malloc_arenas(0) is False


# What the server's process does first (`omnimetrics serve` imports the package before
# anything else), then Arrow's pool and where a kernel's output buffer comes from.
_POOL = """
import omnimetrics.cli
import numpy as np, pyarrow as pa, pyarrow.compute as pc
name = pa.default_memory_pool().backend_name
pools = {p: getattr(pa, f"{p}_memory_pool")() for p in ("jemalloc", "mimalloc", "system")}
held = {p: pool.bytes_allocated() for p, pool in pools.items()}
texts = pc.strftime(pa.array(np.arange(100_000) * 10**6, pa.timestamp("us")), "%H:%M:%S")
grew = [p for p, pool in pools.items() if pool.bytes_allocated() - held[p] > 1_000_000]
print(name, *grew)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="chosen on Linux only")
@pytest.mark.parametrize(("given", "used"), [(None, "jemalloc"), ("system", "system")])
def test_arrow_buffers_are_on_jemalloc_unless_told(given: str | None, used: str) -> None:
    env = {"PATH": "/usr/bin:/bin"} | ({"ARROW_DEFAULT_MEMORY_POOL": given} if given else {})
    done = subprocess.run([sys.executable, "-c", _POOL], capture_output=True, text=True,
                          timeout=60, env=env, check=True)  # fmt: skip
    assert done.stdout.split() == [used, used]  # even a kernel's own buffers
