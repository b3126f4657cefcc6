"""The reconnecting stream client (`/static/omnimetrics.js`) under node's own test runner."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_stream_client_passes_its_node_tests() -> None:
    node = shutil.which("node")
    assert node is not None, "no node on PATH: `make test` installs it"
    done = subprocess.run([node, "--test", "tests/js/"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout and "# pass 0" not in done.stdout
