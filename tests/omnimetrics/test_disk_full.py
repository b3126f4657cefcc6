"""A full disk, and a mirror that cannot be written, through the real server: pushes
answer 507 with a reason and Retry-After (never a bare 500), `/health` is degraded with
the reasons while it lasts, and once space is freed everything works again with nothing
acknowledged lost, and no restart."""

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings, SourceConfig
from tests.helpers import Push, Reply, Upstream, serve, wait_for

DISK_BYTES = 32 * 2**20


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_BYTES at `path` (root only: else the test is skipped)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs",
                           str(path)], capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"could not mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write a ballast file until the disk has no space left."""
    ballast = disk / "ballast"
    chunk = b"\0" * 2**16
    with ballast.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return ballast


def health(base: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{base}/health", timeout=10).json()
    return body


def event(i: int) -> dict[str, Any]:
    return {"source": "pusher", "kind": "gauge", "metrics": {"n": i}, "event_id": f"e-{i}"}


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
def test_a_full_disk_answers_507_says_why_and_recovers_without_loss(
    tmp_path: Path, large: bool
) -> None:
    push = Push(large)
    accepted: list[int] = []
    with small_disk(tmp_path / "disk") as disk, Upstream() as upstream:
        url = upstream.script("/stats", Reply(body=b'{"total": 1}'))
        settings = Settings(db=disk / "t.duckdb", export_interval_seconds=0.2)
        app = create_app(settings, Config(sources=[SourceConfig(name="up", url=url)]))
        with serve(app) as base:
            for i in range(5):
                assert push(f"{base}/ingest", event(i)).status_code == 202
                accepted.append(i)
            wait_for(lambda: health(base)["status"] == "healthy")
            ballast = fill(disk)
            # The log's last page may still hold a few small writes: what fits is stored.
            for i in range(5, 100):
                refused = push(f"{base}/ingest", event(i))
                if refused.status_code != 202:
                    break
                accepted.append(i)
            assert refused.status_code == 507, refused.text
            assert int(refused.headers["retry-after"]) > 0
            reason = refused.json()["error"]
            assert "disk is full" in reason and "No space left on device" in reason

            def degraded() -> dict[str, Any] | None:
                body = health(base)
                reasons = " | ".join(body["reasons"])
                tick = body["collection"]["local"]
                if "the latest write failed" in reasons and tick["error"]:
                    return body
                return None

            full = wait_for(degraded)
            assert full["status"] == "degraded"
            assert "No space left on device" in full["writer"]["error"]
            assert full["writer"]["errors"] >= 1 and full["collection"]["local"]["ticks_failed"]
            assert any("collection tick of tenant 'local' fails" in r for r in full["reasons"])

            ballast.unlink()  # the operator frees space; nothing restarts
            for i in [accepted[-1] + 1, *range(100, 105)]:  # the refused one is sent again
                assert push(f"{base}/ingest", event(i)).status_code == 202
                accepted.append(i)
            healthy = wait_for(lambda: (b := health(base))["status"] == "healthy" and b)
            assert healthy["writer"]["error"] is None and healthy["reasons"] == []
            assert healthy["collection"]["local"]["error"] is None
            stored = httpx.get(f"{base}/api/v1/series",
                               params={"source": "pusher", "metric": "n"}).json()  # fmt: skip
            assert sorted(int(s["value"]) for s in stored["samples"]) == accepted


def test_a_failing_export_degrades_health_until_one_succeeds(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    blocker = Path(f"{db}.parquet")
    blocker.write_text("a file where the mirror's folder goes")  # every export fails
    settings = Settings(db=db, export_interval_seconds=0.1)
    with serve(create_app(settings, Config(sources=[]))) as base:
        assert Push(False)(f"{base}/ingest", event(1)).status_code == 202
        failing = wait_for(lambda: (b := health(base))["jobs"]["export"]["error"] and b)
        assert failing["status"] == "degraded"
        assert any(r.startswith(f"the export to {blocker} fails") for r in failing["reasons"])
        assert failing["jobs"]["export"]["failures"] >= 1
        blocker.unlink()
        healthy = wait_for(lambda: (b := health(base))["status"] == "healthy" and b)
        assert healthy["jobs"]["export"]["error"] is None and healthy["reasons"] == []
    assert (blocker / "meta.json").exists()
