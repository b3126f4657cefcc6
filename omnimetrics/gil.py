"""How long a thread may hold the GIL while another waits for it, set at startup.

A thread coming back from DuckDB (which runs without the GIL) waits for the thread that
holds it to let go, at most one switch interval each time, and the live tail's read does
that a dozen times. Under a reconnect storm the worker threads encoding catch-up pages and
the event loop writing them held it in turn: the tail's read of one new batch took up to
135 ms of wall time for 6.5 ms of CPU, and live commit-to-receive p99 was 168-278 ms in
seven runs of `python -m bench storm` (under its 200 ms target in three). With Python's
default of 5 ms cut to 1 ms the same read took at most 65 ms and the p99 was 85-191 ms in
five runs (under 200 in all), with the storm caught up as fast.
"""

import sys

SWITCH_INTERVAL_SECONDS = 0.001  # Python's default is 0.005


def share_the_gil(seconds: float = SWITCH_INTERVAL_SECONDS) -> None:
    sys.setswitchinterval(seconds)
