"""The scheduler inside the app's lifespan."""

from pathlib import Path

import httpx
import orjson

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings, SourceConfig
from schemas.db import Database
from schemas.tenants import SettingsUpdate
from tests.helpers import Reply, Upstream, serve, wait_for


def test_scheduler_collects_once_per_tick_per_source(tmp_path: Path, upstream: Upstream) -> None:
    body = orjson.dumps({"metrics": {"total": 1}})
    sources = [
        SourceConfig(name="a", url=upstream.script("/a", Reply(body=body))),
        SourceConfig(name="b", url=upstream.script("/b", Reply(body=body))),
        SourceConfig(name="c", url=upstream.script("/c", Reply(body=body)), tenant_id="acme"),
    ]
    config = Config(
        sources=sources, tenants={"acme": SettingsUpdate(collection_interval_seconds=2)}
    )
    path = tmp_path / "jobs.duckdb"
    with serve(create_app(Settings(db=path), config)) as base:
        wait_for(lambda: upstream.requests["/a"] >= 3, timeout=10)
        health = httpx.get(f"{base}/health").json()
    assert health["status"] == "healthy"
    assert set(health["sources"]) == {"a", "b", "acme/c"}
    db = Database(path)
    per_source = dict(
        db.read_sync(
            lambda c: c.execute("SELECT source, count(*) FROM scrapes GROUP BY 1").fetchall()
        )
    )
    batches = db.read_sync(
        lambda c: c.execute(
            "SELECT tenant_id, count(DISTINCT batch), count(*) FROM scrapes GROUP BY 1"
        ).fetchall()
    )
    db.close()
    # Every request the upstream saw is one stored scrape, and a tick is one batch.
    assert per_source == {"a": upstream.requests["/a"], "b": upstream.requests["/b"],
                          "c": upstream.requests["/c"]}  # fmt: skip
    by_tenant = {t: (n_batches, n_rows) for t, n_batches, n_rows in batches}
    assert by_tenant["local"][1] == 2 * by_tenant["local"][0]
    # acme ticks every 2 s, local every 1 s.
    assert by_tenant["acme"][0] < by_tenant["local"][0]


def test_health_is_degraded_while_a_source_fails(tmp_path: Path, upstream: Upstream) -> None:
    config = Config(sources=[SourceConfig(name="bad", url=upstream.script("/x", Reply(503, b"")))])
    with serve(create_app(Settings(db=tmp_path / "h.duckdb"), config)) as base:
        health = wait_for(
            lambda: (
                (h := httpx.get(f"{base}/health").json())["sources"]["bad"]["status"] == "down"
                and h
            )
        )
    assert health["status"] == "degraded"
    assert health["sources"]["bad"]["error"] == "HTTP 503 Service Unavailable"
