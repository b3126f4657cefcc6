"""A tick either runs or is counted as skipped: a stalled event loop and a slow source,
through the real server, with `/health` saying so."""

import time
from pathlib import Path
from typing import Any

import httpx

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings, SourceConfig
from tests.helpers import Reply, Upstream, serve, wait_for


def health(base: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{base}/health", timeout=15).json()
    return body


def accounted(body: dict[str, Any]) -> int:
    local = body["collection"].get("local", {"ticks_run": 0, "ticks_skipped": 0})
    return int(local["ticks_run"] + local["ticks_skipped"])


def test_a_stalled_loop_and_a_slow_source_are_counted_and_degrade_health(
    tmp_path: Path,
) -> None:
    loops: list[Any] = []
    with Upstream() as upstream:
        fast = upstream.script("/fast", Reply(body=b'{"total": 1}'))
        slow = upstream.script("/slow", Reply(body=b'{"total": 1}', delay=5))
        sources = [SourceConfig(name="fast", url=fast), SourceConfig(name="slow", url=slow)]
        app = create_app(Settings(db=tmp_path / "t.duckdb"), Config(sources=sources))
        with serve(app, loops=loops) as base:
            wait_for(lambda: health(base)["collection"].get("local", {}).get("ticks_run", 0) >= 2)
            before, since = accounted(health(base)), time.monotonic()
            assert health(base)["sources"]["slow"]["error"].startswith("timed out")
            # The slow source costs only its own sample: no tick was skipped for it.
            assert health(base)["collection"]["local"]["ticks_skipped"] == 0
            loops[0].call_soon_threadsafe(time.sleep, 3.5)  # the loop stalls for 3.5 s
            # (the slow source's "down" is a reason all along: wait for the skips')
            stalled = wait_for(lambda: (b := health(base))["status"] == "degraded"
                               and any("skipped" in r for r in b["reasons"]) and b)  # fmt: skip
            assert stalled["collection"]["local"]["ticks_skipped"] >= 2
            assert "skipped" in stalled["reasons"][0] and "local" in stalled["reasons"][0]
            time.sleep(1.5)
            after, until = accounted(health(base)), time.monotonic()
    # Every run time in the window either ran or was counted (one at each edge may be
    # in flight).
    assert after - before >= int(until - since) - 2
    assert stalled["sources"]["fast"]["duration_seconds"] < 1.0  # the target's time only
