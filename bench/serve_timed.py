"""`omnimetrics serve` as the CLI runs it, with a clock on the writer's commits.

`python -m bench.serve_timed --commits-out FILE serve ...`: on exit, FILE holds
`{last_seq: time}` for every commit, `time` being `time.time()` just after the commit in
the writer's thread. The stream benchmark's clients stamp each arrival with the same
clock (one machine), so commit-to-receive is measured, not bracketed.
"""

import signal
import sys
from pathlib import Path

import orjson

from omnimetrics.cli import main
from schemas.signals import Appended


def run(argv: list[str]) -> int:
    at = argv.index("--commits-out")
    out = Path(argv[at + 1])
    rest = argv[:at] + argv[at + 2 :]
    commits: dict[int, float] = {}

    def clock(appended: Appended) -> None:
        commits[appended.last_seq] = appended.committed_at

    # uvicorn re-raises the SIGTERM it caught once it has shut down: end normally then,
    # through the `finally` below, instead of being killed by the default action.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        return main(rest, commit_listeners=[clock])
    finally:
        out.write_bytes(orjson.dumps({str(seq): t for seq, t in commits.items()}))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
