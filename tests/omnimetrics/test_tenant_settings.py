"""Tenant settings: the routes, and every setting taking effect live, with no restart."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings, SourceConfig
from schemas.db import Database
from tests.helpers import Reply, Upstream, serve, wait_for
from tests.stream.conftest import recv, recv_type, sse_frames

DEFAULTS = {
    "metrics_streaming": True,
    "collection_interval_seconds": 1,
    "max_events_per_minute": 60,
    "features": {"compression": True, "embeddings": True, "workflows": True,
                 "response_cache": True},
    "performance_profile": "high_frequency",
    "retention_days": None,
}  # fmt: skip


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "settings.duckdb"


@pytest.fixture
def base(db_path: Path) -> Iterator[str]:
    with serve(create_app(Settings(db=db_path), Config(sources=[]))) as url:
        yield url


def put(base: str, body: dict[str, Any], tenant: str = "local") -> httpx.Response:
    return httpx.put(f"{base}/settings", params={"tenant_id": tenant}, json=body)


def stored_rows(db_path: Path, tenant: str) -> int:
    db = Database(db_path)
    try:
        rows = db.read_sync(
            lambda c: c.execute(
                "SELECT count(*) FROM tenant_settings WHERE tenant_id = ?", [tenant]
            ).fetchall()
        )
        return int(rows[0][0])
    finally:
        db.close()


def test_reading_an_unknown_tenant_gives_defaults_and_creates_nothing(
    db_path: Path, tmp_path: Path
) -> None:
    with serve(create_app(Settings(db=db_path), Config(sources=[]))) as base:
        body = httpx.get(f"{base}/settings", params={"tenant_id": "nobody"}).json()
        local = httpx.get(f"{base}/settings").json()
    assert body == {"tenant_id": "nobody", "settings": DEFAULTS, "created_at": None,
                    "updated_at": None}  # fmt: skip
    assert local["tenant_id"] == "local" and local["settings"] == DEFAULTS
    assert stored_rows(db_path, "nobody") == 0


def test_put_changes_the_fields_given_and_keeps_the_others(base: str) -> None:
    response = put(base, {"max_events_per_minute": 120, "features": {"workflows": False}})
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["tenant_id"]) == ("success", "local")
    want = {**DEFAULTS, "max_events_per_minute": 120,
            "features": {**DEFAULTS["features"], "workflows": False}}  # fmt: skip
    assert body["settings"] == want
    got = httpx.get(f"{base}/settings").json()
    assert got["settings"] == want
    assert got["created_at"] is not None and got["updated_at"] >= got["created_at"]


def test_a_profile_brings_its_preset_and_fields_given_with_it_win(base: str) -> None:
    low = put(base, {"performance_profile": "low_frequency"}).json()["settings"]
    assert (low["collection_interval_seconds"], low["max_events_per_minute"]) == (5, 30)
    mixed = put(base, {"performance_profile": "low_frequency", "collection_interval_seconds": 3})
    assert mixed.json()["settings"]["collection_interval_seconds"] == 3
    profiles = httpx.get(f"{base}/settings/profiles").json()["profiles"]
    assert set(profiles) == {"high_frequency", "low_frequency", "batch_only", "disabled"}
    assert profiles["low_frequency"]["collection_interval_seconds"] == 5
    assert profiles["batch_only"]["metrics_streaming"] is False
    assert profiles["disabled"]["features"]["compression"] is False
    assert all("description" in p and "max_events_per_minute" in p for p in profiles.values())


def test_retention_days_is_checked_and_a_profile_keeps_it(base: str) -> None:
    assert put(base, {"retention_days": 7}).json()["settings"]["retention_days"] == 7
    low = put(base, {"performance_profile": "low_frequency"}).json()["settings"]
    assert low["retention_days"] == 7 and low["collection_interval_seconds"] == 5
    refused = put(base, {"retention_days": 0})
    assert refused.status_code == 422 and "retention_days" in refused.text
    assert httpx.get(f"{base}/settings").json()["settings"]["retention_days"] == 7


def test_reset_goes_back_to_the_defaults(base: str) -> None:
    put(base, {"performance_profile": "batch_only"})
    body = httpx.post(f"{base}/settings/reset").json()
    assert body["settings"] == DEFAULTS and body["message"] == "Settings reset to defaults"
    assert httpx.get(f"{base}/settings").json()["settings"] == DEFAULTS


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"collection_interval_seconds": 0}, "collection_interval_seconds"),
        ({"collection_interval_seconds": 61}, "collection_interval_seconds"),
        ({"max_events_per_minute": 0}, "max_events_per_minute"),
        ({"max_events_per_minute": 2**70}, "max_events_per_minute"),  # found by schemathesis
        ({"features": {"teleport": True}}, "features.teleport"),
        ({"performance_profile": "turbo"}, "performance_profile"),
        ({"metrics_streaming": "sometimes"}, "metrics_streaming"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_invalid_values_are_422_naming_the_field_and_change_nothing(
    base: str, body: dict[str, Any], field: str
) -> None:
    response = put(base, body)
    assert response.status_code == 422
    assert field in response.json()["error"]
    assert httpx.get(f"{base}/settings").json()["settings"] == DEFAULTS


def test_a_bad_tenant_or_an_unknown_parameter_is_422(base: str) -> None:
    assert httpx.get(f"{base}/settings", params={"tenant_id": "a b"}).status_code == 422
    response = httpx.get(f"{base}/settings", params={"tenant": "x"})
    assert response.status_code == 422 and "tenant" in response.json()["error"]
    assert httpx.get(f"{base}/settings/profiles", params={"x": "1"}).status_code == 422
    assert httpx.get(f"{base}/health", params={"x": "1"}).status_code == 422
    event = {"source": "s", "kind": "gauge", "metrics": {"m": 1}}
    pushed = httpx.post(f"{base}/ingest", params={"tenant_id": "x"}, json=event)
    assert pushed.status_code == 422 and "tenant_id" in pushed.json()["error"]


def test_settings_survive_a_restart(db_path: Path) -> None:
    with serve(create_app(Settings(db=db_path), Config(sources=[]))) as base:
        put(base, {"performance_profile": "low_frequency"}, tenant="acme")
    with serve(create_app(Settings(db=db_path), Config(sources=[]))) as base:
        settings = httpx.get(f"{base}/settings", params={"tenant_id": "acme"}).json()["settings"]
    assert settings["performance_profile"] == "low_frequency"
    assert stored_rows(db_path, "acme") == 1


# ---- taking effect live ----


@pytest.fixture
def scraped(db_path: Path, upstream: Upstream) -> Iterator[tuple[str, Upstream]]:
    sources = [
        SourceConfig(name="compression", url=upstream.script("/c", Reply(body=b'{"n": 1}'))),
        SourceConfig(name="embeddings", url=upstream.script("/e", Reply(body=b'{"n": 1}'))),
        SourceConfig(name="other", url=upstream.script("/o", Reply(body=b'{"n": 1}'))),
    ]
    with serve(create_app(Settings(db=db_path), Config(sources=sources))) as base:
        yield base, upstream


def rate(upstream: Upstream, path: str, seconds: float) -> int:
    before = upstream.requests[path]
    time.sleep(seconds)
    return upstream.requests[path] - before


def test_the_interval_changes_within_one_interval(scraped: tuple[str, Upstream]) -> None:
    base, upstream = scraped
    wait_for(lambda: upstream.requests["/c"] >= 2)
    assert rate(upstream, "/c", 3.0) >= 2  # every second
    put(base, {"performance_profile": "low_frequency"})  # every 5 s from now
    time.sleep(0.5)  # the tick the change itself runs at once
    assert rate(upstream, "/c", 4.0) <= 1
    put(base, {"collection_interval_seconds": 1})
    assert rate(upstream, "/c", 3.0) >= 2


def test_a_feature_switched_off_stops_collecting_its_sources(
    scraped: tuple[str, Upstream],
) -> None:
    base, upstream = scraped
    wait_for(lambda: upstream.requests["/c"] >= 1 and upstream.requests["/e"] >= 1)
    put(base, {"features": {"compression": False}})
    time.sleep(0.3)  # a tick already under way may finish
    counts = rate(upstream, "/c", 2.5), rate(upstream, "/e", 2.5), rate(upstream, "/o", 0.1)
    assert counts[0] == 0 and counts[1] >= 1
    assert rate(upstream, "/o", 2.0) >= 1  # a source of no feature is always collected
    put(base, {"features": {"compression": True}})
    wait_for(lambda: rate(upstream, "/c", 1.5) >= 1)


def test_disabled_collects_nothing(scraped: tuple[str, Upstream]) -> None:
    base, upstream = scraped
    wait_for(lambda: upstream.requests["/o"] >= 1)
    put(base, {"performance_profile": "disabled"})
    time.sleep(0.3)
    assert rate(upstream, "/o", 2.5) == 0
    put(base, {"performance_profile": "high_frequency"})
    wait_for(lambda: rate(upstream, "/o", 1.5) >= 1)


@pytest.mark.anyio
async def test_streaming_off_closes_streams_and_refuses_new_ones(base: str) -> None:
    ws_url = base.replace("http://", "ws://") + "/ws/metrics"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        async with connect(ws_url) as ws, http.stream("GET", "/stream/metrics") as sse:
            await recv_type(ws, "connected")
            frames = sse_frames(sse)
            while (await anext(frames)).get("event") != "connected":
                pass
            off = await http.put("/settings", json={"metrics_streaming": False})
            assert off.status_code == 200
            with anyio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            assert "disabled in settings" in closed.value.rcvd.reason
            with anyio.fail_after(5):
                last = [frame async for frame in frames][-1]
            assert last["event"] == "error" and "disabled in settings" in last["data"]
        # New ones: WS accepted, then closed with the reason; SSE 403 with JSON.
        async with connect(ws_url) as ws:
            with pytest.raises(ConnectionClosed) as refused:
                await recv(ws)
        assert refused.value.rcvd is not None and refused.value.rcvd.code == 1008
        assert "disabled in settings" in refused.value.rcvd.reason
        response = await http.get("/stream/metrics")
        assert response.status_code == 403
        assert "disabled in settings" in response.json()["error"]
        # Another tenant's streams are not affected.
        async with connect(f"{ws_url}?tenant_id=acme") as ws:
            await recv_type(ws, "connected")
        await http.put("/settings", json={"metrics_streaming": True})
        async with connect(ws_url) as ws:
            await recv_type(ws, "connected")


@pytest.mark.anyio
async def test_batch_only_streams_nothing(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        await http.put("/settings", json={"performance_profile": "batch_only"})
        response = await http.get("/stream/metrics")
    assert response.status_code == 403 and "batch_only" in response.json()["error"]


@pytest.mark.anyio
async def test_max_events_per_minute_coalesces_with_exact_cursors(base: str) -> None:
    ws_url = base.replace("http://", "ws://") + "/ws/metrics"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        # 60 a minute: one a second, from a bucket of 5.
        await http.put("/settings", json={"max_events_per_minute": 60})
        async with connect(ws_url) as ws:
            await recv_type(ws, "connected")
            started = time.monotonic()
            seqs = []
            for value in range(1, 31):  # 30 batches in well under a second
                body = {"source": "c", "kind": "counter", "metrics": {"total": value}}
                seqs.append((await http.post("/ingest", json=body)).json()["seq"])
            got: list[dict[str, Any]] = []
            with anyio.fail_after(15):
                while not got or got[-1]["seq"] != seqs[-1]:
                    got.append(await recv_type(ws, "metrics", wait=10))
            elapsed = time.monotonic() - started
        # Capped: the bucket's 5, then about one a second; nothing skipped, only merged.
        assert len(got) <= 5 + elapsed + 1, (len(got), elapsed)
        assert len(got) < 30
        assert sum(m.get("coalesced", 1) for m in got) == 30
        assert sum(m["deltas"].get("c", {}).get("total", 0) for m in got) == 29
        assert got[-1]["data"]["c"]["total"] == 30
        assert [m["seq"] for m in got] == sorted(m["seq"] for m in got)
        # The last cursor is exact: resuming from it brings nothing old again.
        async with connect(f"{ws_url}?since={got[-1]['cursor']}") as ws:
            assert (await recv_type(ws, "connected"))["resumed"] is True
            body = {"source": "c", "kind": "counter", "metrics": {"total": 31}}
            seq = (await http.post("/ingest", json=body)).json()["seq"]
            message = await recv_type(ws, "metrics")
            assert message["seq"] == seq and message["deltas"]["c"]["total"] == 1


@pytest.mark.anyio
async def test_a_paced_client_that_resumes_mid_burst_misses_nothing(base: str) -> None:
    ws_url = base.replace("http://", "ws://") + "/ws/metrics?tool_id=resume"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        await http.put("/settings", json={"max_events_per_minute": 60})
        got: list[dict[str, Any]] = []
        async with connect(ws_url) as ws:
            await recv_type(ws, "connected")
            seqs = []
            for value in range(1, 31):
                body = {"source": "r", "kind": "counter", "metrics": {"total": value},
                        "tool_id": "resume"}  # fmt: skip
                seqs.append((await http.post("/ingest", json=body)).json()["seq"])
            for _ in range(3):  # the bucket's first few, then it leaves
                got.append(await recv_type(ws, "metrics", wait=10))
        async with connect(f"{ws_url}&since={got[-1]['cursor']}") as ws:
            assert (await recv_type(ws, "connected"))["resumed"] is True
            with anyio.fail_after(30):
                while got[-1]["seq"] != seqs[-1]:
                    got.append(await recv_type(ws, "metrics", wait=30))
    # Across both connections: every batch once, in order, none skipped.
    assert [m["seq"] for m in got] == sorted({m["seq"] for m in got})
    assert sum(m.get("coalesced", 1) for m in got) == 30
    assert sum(m["deltas"].get("r", {}).get("total", 0) for m in got) == 29
    assert got[-1]["data"]["r"]["total"] == 30


def test_config_file_seeds_a_tenant_with_a_profile(db_path: Path) -> None:
    config = Config.model_validate(
        {"sources": [], "tenants": {"local": {"performance_profile": "low_frequency"}}}
    )
    with serve(create_app(Settings(db=db_path), config)) as base:
        settings = httpx.get(f"{base}/settings").json()["settings"]
    assert settings["collection_interval_seconds"] == 5
