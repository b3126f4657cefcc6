"""Group commit: concurrent pushes share transactions, yet each request is answered only
after its own events are committed, all or nothing, and stored once by its event ids."""

from pathlib import Path

import anyio
import httpx
import pytest

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from tests.helpers import serve

pytestmark = pytest.mark.anyio

PUSHERS = 50
REQUESTS = 4  # per pusher, each sent twice (a retry with the same event ids)


def body(pusher: int, request: int) -> dict[str, object]:
    return {"events": [
        {"source": f"p{pusher}", "kind": "counter", "event_id": f"p{pusher}-r{request}-e{e}",
         "metrics": {"total": float(request * 10 + e)}, "ts": f"2026-11-20T10:{request:02d}:0{e}Z"}
        for e in range(3)
    ]}  # fmt: skip


async def test_concurrent_pushes_are_committed_together_each_once_and_all_or_nothing(
    tmp_path: Path,
) -> None:
    settings = Settings(db=tmp_path / "g.duckdb", max_series_per_tenant=PUSHERS + 5)
    statuses: list[int] = []
    late: list[str] = []
    with serve(create_app(settings, Config(sources=[]))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30,
                                     limits=httpx.Limits(max_connections=64)) as http:  # fmt: skip

            async def pusher(i: int) -> None:
                for r in range(REQUESTS):
                    for _ in range(2):
                        response = await http.post("/ingest", json=body(i, r))
                        statuses.append(response.status_code)
                        # Answered only after the commit: its events are readable now.
                        seen = await http.get("/api/v1/series", params={
                            "source": f"p{i}", "from": "2026-11-20T10:00:00Z",
                            "to": "2026-11-20T11:00:00Z"})  # fmt: skip
                        values = {s["value"] for s in seen.json()["samples"]}
                        if not {float(r * 10 + e) for e in range(3)} <= values:
                            late.append(f"p{i} r{r}")

            async def invalid() -> None:
                await anyio.sleep(0.05)  # among the others, not before them
                too_many = {"source": "wide", "kind": "gauge",
                            "metrics": {f"m{i}": 1.0 for i in range(20)}}  # fmt: skip
                refused = await http.post("/ingest", json=too_many)
                assert refused.status_code == 422 and "series" in refused.json()["error"]
                malformed = await http.post("/ingest", json={"source": "x", "metrics": {}})
                assert malformed.status_code == 422

            async with anyio.create_task_group() as group:
                for i in range(PUSHERS):
                    group.start_soon(pusher, i)
                group.start_soon(invalid)
            health = (await http.get("/health")).json()
            wide = await http.get("/api/v1/latest", params={"source": "wide"})
            stored = await http.get("/api/v1/series", params={
                "from": "2026-11-20T10:00:00Z", "to": "2026-11-20T11:00:00Z",
                "limit": "100000"})  # fmt: skip
    assert statuses == [202] * (PUSHERS * REQUESTS * 2)
    assert late == []
    assert wide.json()["series"] == []  # nothing of the refused request
    samples = stored.json()["samples"]
    keys = [(s["source"], s["ts"]) for s in samples]
    assert len(keys) == len(set(keys)) == PUSHERS * REQUESTS * 3  # every event exactly once
    # Fewer transactions than requests: some were committed together.
    assert health["writer"]["transactions"] < PUSHERS * REQUESTS * 2 + 1  # + the refused
