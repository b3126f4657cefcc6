"""`GET /metrics`: the service's own metrics, read by prometheus-client's own parser and
scraped by a real Prometheus server (Debian's `prometheus`, which `make test` installs)."""

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings, SourceConfig, sources_for, with_demo_tenants
from tests.helpers import Push, Reply, Upstream, free_port, serve, wait_for
from tests.omnimetrics.test_auth import SECRET, auth
from tests.stream.conftest import recv_type

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base: str, **kwargs: Any) -> Samples:
    """Every sample of `/metrics`, by name and labels, parsed by prometheus-client."""
    response = httpx.get(f"{base}/metrics", timeout=10, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        assert family.name.startswith("omnimetrics_"), family.name
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def event(i: int, **fields: Any) -> dict[str, Any]:
    return {"source": "pusher", "kind": "counter", "metrics": {"n": i}, **fields}


@pytest.mark.anyio
async def test_metrics_count_what_the_service_did(tmp_path: Path) -> None:
    with Upstream() as upstream:
        url = upstream.script("/stats", Reply(body=b'{"total": 1, "ratio": 0.5}'))
        settings = Settings(db=tmp_path / "t.duckdb", export_interval_seconds=0.2)
        app = create_app(settings, Config(sources=[SourceConfig(name="up", url=url)]))
        with serve(app) as base:
            ws_url = base.replace("http://", "ws://") + "/ws/metrics"
            async with connect(ws_url) as ws:
                await recv_type(ws, "connected")
                push = Push(False)
                for i in range(3):
                    assert (
                        await asyncio.to_thread(push, f"{base}/ingest", event(i))
                    ).status_code == 202
                bad = await asyncio.to_thread(push, f"{base}/ingest", event(1, kind="bogus"))
                assert bad.status_code == 422
                await recv_type(ws, "metrics")

                def ready() -> Samples | None:
                    got = scrape(base)
                    delivered = got.get(("omnimetrics_stream_fanout_seconds_count", ()), 0)
                    exported = got.get(("omnimetrics_job_runs_total", (("job", "export"),)), 0)
                    return got if delivered >= 1 and exported >= 1 else None

                got = await asyncio.to_thread(wait_for, ready)
                assert got[("omnimetrics_stream_clients", (("transport", "ws"),))] == 1
                assert got[("omnimetrics_stream_clients", (("transport", "sse"),))] == 0
    up = (("source", "up"), ("tenant_id", "local"))
    assert got[("omnimetrics_source_up", up)] == 1
    assert got[("omnimetrics_scrape_samples", up)] == 2
    assert got[("omnimetrics_scrape_duration_seconds_count", up)] >= 1
    assert got[("omnimetrics_ticks_total", (("tenant_id", "local"),))] >= 1
    assert got[("omnimetrics_ticks_skipped_total", (("tenant_id", "local"),))] == 0
    assert got[("omnimetrics_pushes_total", (("status", "202"),))] == 3
    assert got[("omnimetrics_pushes_total", (("status", "422"),))] == 1
    assert got[("omnimetrics_rows_committed_total", ())] >= 3 + 2
    assert got[("omnimetrics_batches_committed_total", ())] >= 3 + 1
    assert (
        got[("omnimetrics_commit_seconds_count", ())] == got[("omnimetrics_transactions_total", ())]
    )
    assert got[("omnimetrics_write_errors_total", ())] == 0
    assert got[("omnimetrics_database_bytes", ())] > 0
    assert got[("omnimetrics_job_failing", (("job", "export"),))] == 0
    assert got[("omnimetrics_stream_commit_to_sent_seconds_count", ())] >= 1


def test_metrics_need_the_admin_scope_unless_public(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "t.duckdb", jwt_secret=SECRET)
    with serve(create_app(settings, Config(sources=[]))) as base:
        assert httpx.get(f"{base}/metrics").status_code == 401
        denied = httpx.get(f"{base}/metrics", headers=auth("acme", "read", "write"))
        assert denied.status_code == 403 and "admin" in denied.json()["error"]
        assert scrape(base, headers=auth("acme", "admin"))
        assert httpx.get(f"{base}/metrics?x=1", headers=auth("acme", "admin")).status_code == 422
    public = Settings(db=tmp_path / "p.duckdb", jwt_secret=SECRET, metrics_public=True)
    with serve(create_app(public, Config(sources=[]))) as base:
        assert scrape(base)
        assert httpx.get(f"{base}/api/v1/latest").status_code == 401  # nothing else opens


def test_the_demo_scrapes_its_own_metrics(tmp_path: Path) -> None:
    demo = Settings(db=tmp_path / "t.duckdb", demo=True, port=8123)
    own = [s for s in sources_for(demo, Config()) if s.name == "omnimetrics"]
    assert [(s.url, s.format, s.tenant_id) for s in own] == [
        ("http://127.0.0.1:8123/metrics", "prometheus", "omnimetrics")
    ]
    tenants = with_demo_tenants(demo, Config()).tenants
    assert tenants["omnimetrics"].collection_interval_seconds == 10
    closed = Settings(db=tmp_path / "t.duckdb", demo=True, jwt_secret=SECRET)
    assert all(s.name != "omnimetrics" for s in sources_for(closed, Config()))


@pytest.fixture
def prometheus() -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: `make test` installs it (scripts/system-packages.sh)")
    yield binary


def test_a_real_prometheus_scrapes_and_queries_the_metrics(tmp_path: Path, prometheus: str) -> None:
    settings = Settings(db=tmp_path / "t.duckdb")
    with serve(create_app(settings, Config(sources=[]))) as base:
        for i in range(2):
            assert Push(False)(f"{base}/ingest", event(i)).status_code == 202
        target = base.removeprefix("http://")
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: omnimetrics\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        server = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:

            def query(expr: str) -> list[dict[str, Any]] | None:
                try:
                    answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query",
                                       params={"query": expr}, timeout=5).json()  # fmt: skip
                except httpx.HTTPError:
                    return None
                result: list[dict[str, Any]] = answer["data"]["result"]
                return result or None

            up = wait_for(lambda: query('up{job="omnimetrics"} == 1'), timeout=60, interval=0.5)
            assert up[0]["metric"]["instance"] == target
            pushes = wait_for(lambda: query('omnimetrics_pushes_total{status="202"}'), timeout=30)
            assert float(pushes[0]["value"][1]) == 2
            rows = query("omnimetrics_rows_committed_total")
            assert rows is not None and float(rows[0]["value"][1]) >= 2
            buckets = query("omnimetrics_commit_seconds_bucket")
            assert buckets is not None and len(buckets) >= 10  # a histogram, bucket by bucket
            assert query("omnimetrics_database_bytes > 0") is not None
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=20)
            log.close()
