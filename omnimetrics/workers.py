"""`omnimetrics gateway --workers N`: N gateway processes on one port, so every core serves
clients. Each binds the port with SO_REUSEPORT and the kernel spreads new connections
between them; each reads the Redis stream itself. A worker that dies (kill -9, a crash)
is started again after RESTART_SECONDS (its clients reconnect, to any worker, and resume
from their cursors); one that exits because it cannot start (exit 2 or 3: bad settings,
no writer has published) ends them all with its code. SIGTERM and SIGINT are passed on,
and the workers get STOP_SECONDS to close their streams.
"""

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from omnimetrics.server import CannotListen, listen_socket
from omnimetrics.settings import Settings

log = logging.getLogger("omnimetrics")

RESTART_SECONDS = 1.0
STOP_SECONDS = 15.0
CANNOT_START = (2, 3)


def worker_argv(argv: Sequence[str]) -> list[str]:
    """`argv` (a `gateway` command line) for one worker: `--workers 1 --reuse-port`."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return [sys.executable, "-m", "omnimetrics.cli", *out, "--workers", "1", "--reuse-port"]


def supervise(settings: Settings, argv: Sequence[str]) -> int:
    """Run `settings.gateway_workers` workers until a signal; the exit code."""
    try:  # free, or the workers would quietly join another server's port
        listen_socket(settings.host, settings.gateway_port).close()
    except CannotListen as exc:
        print(f"omnimetrics: error: {exc}", file=sys.stderr)
        return 3
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    command = worker_argv(argv)
    workers = [subprocess.Popen(command) for _ in range(settings.gateway_workers)]
    code = 0
    while not stopping:
        for i, worker in enumerate(workers):
            status = worker.poll()
            if status is None or stopping:
                continue
            if status in CANNOT_START:
                stopping.append(0)
                code = status
                break
            log.warning("gateway worker %d (pid %d) exited with %s; starting another",
                        i, worker.pid, status)  # fmt: skip
            time.sleep(RESTART_SECONDS)
            workers[i] = subprocess.Popen(command)
        time.sleep(0.1)
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for worker in workers:
        try:
            worker.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    return code
