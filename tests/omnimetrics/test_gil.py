"""`omnimetrics serve` lets a thread hold the GIL 1 ms, not Python's 5, while another
waits (omnimetrics/gil.py): the live tail's reads come back from DuckDB that much sooner
under load."""

import socket
import subprocess
import sys
from pathlib import Path

# The CLI as far as it gets on a port that is taken (exit 3, after the process-wide
# settings and before any server): the interval the process then has.
_SERVE = """
import sys
from omnimetrics.cli import main
before = sys.getswitchinterval()
try:
    main(["serve", "--port", sys.argv[1], "--db", sys.argv[2]])
except SystemExit as exit:
    print(before, sys.getswitchinterval(), exit.code)
"""


def test_serve_sets_the_switch_interval_before_it_listens(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run([sys.executable, "-c", _SERVE, port, str(tmp_path / "x.duckdb")],
                              capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert done.stdout.split() == ["0.005", "0.001", "3"], done.stderr
