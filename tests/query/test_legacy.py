"""The old service's read routes, through the real server, over pushed and scraped data."""

import asyncio
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ingest.writer import Writer
from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings, SourceConfig
from query.legacy import current
from schemas.db import Database
from schemas.models import SampleFilters
from schemas.rows import SampleRow, ScrapeRow
from schemas.signals import AppendSignal
from schemas.times import rfc3339, utcnow
from tests.helpers import Reply, Upstream, serve, wait_for


def push(base: str, at: datetime, source: str, metrics: dict[str, float], **fields: Any) -> None:
    body = {"source": source, "kind": "counter", "ts": rfc3339(at), "metrics": metrics, **fields}
    assert httpx.post(f"{base}/ingest", json=body).status_code == 202


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("legacy") / "legacy.duckdb"
    now = utcnow()

    def ago(minutes: float) -> datetime:
        return now - timedelta(minutes=minutes)

    with serve(create_app(Settings(db=path), Config(sources=[]))) as url:
        cc = {"tool_id": "claude-code", "session_id": "s-1"}
        # The foundation's restart scenario: 1000, 1010, a failed tick, 1015, 5, 12 → 27.
        for minute, value in [(50, 1000), (49, 1010), (47, 1015), (46, 5), (45, 12)]:
            push(url, ago(minute), "compression", {"metrics.total_tokens_saved": value}, **cc)
        push(url, ago(50), "compression", {"metrics.total_compressions": 3}, **cc)
        push(url, ago(45), "compression", {"metrics.total_compressions": 4}, **cc)
        push(url, ago(45), "compression", {"metrics.avg_compression_ratio": 0.4},
             kind="gauge", **cc)  # fmt: skip
        push(url, ago(48), "embeddings", {"mlx_metrics.total_embeddings": 100}, **cc)
        push(url, ago(44), "embeddings", {"mlx_metrics.total_embeddings": 130}, **cc)
        for minute, rate in [(48, 0.5), (44, 0.7)]:
            push(url, ago(minute), "embeddings", {"mlx_metrics.cache_hit_rate": rate},
                 kind="gauge", **cc)  # fmt: skip
        cursor = {"tool_id": "cursor", "session_id": "s-2"}
        push(url, ago(10), "compression", {"metrics.total_tokens_saved": 50}, **cursor)
        push(url, ago(5), "compression", {"metrics.total_tokens_saved": 80}, **cursor)
        push(url, ago(4), "compression", {"tokens_saved": 5}, kind="delta", **cursor)
        # Another tenant, and an old session outside every window asked about below.
        push(url, ago(30), "compression", {"metrics.total_tokens_saved": 1000}, tenant_id="acme")
        push(url, ago(20), "compression", {"metrics.total_tokens_saved": 2000}, tenant_id="acme")
        old = {"tool_id": "claude-code", "session_id": "s-old"}
        push(url, ago(3 * 24 * 60), "compression", {"metrics.total_tokens_saved": 1}, **old)
        push(url, ago(3 * 24 * 60 - 1), "compression", {"metrics.total_tokens_saved": 9}, **old)
        yield url


def get(base: str, route: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{base}{route}", params=params)


def saved(base: str, **params: Any) -> Any:
    return get(base, "/metrics/aggregates", **params).json()["total_tokens_saved"]


def test_aggregates_are_reset_aware_totals_and_gauge_averages(base: str) -> None:
    body = get(base, "/metrics/aggregates", tenant_id="local").json()
    assert body == {
        "total_tokens_saved": 27 + 35,
        "total_embeddings": 30,
        "total_compressions": 1,
        "avg_cache_hit_rate": pytest.approx(0.6),
        "avg_compression_ratio": pytest.approx(0.4),
        "total_sessions": 2,
        "active_sessions": 1,  # s-2 sent samples in the last 30 minutes, s-1 did not
    }
    assert saved(base, tool_id="claude-code") == 27
    # Every tenant without a filter: acme's 1000 too; the old session is outside 24 h.
    assert saved(base) == 27 + 35 + 1000
    assert saved(base, hours=96) == 27 + 35 + 1000 + 8


def test_by_tool_orders_tools_by_tokens_saved(base: str) -> None:
    body = get(base, "/metrics/by-tool").json()
    assert body["hours"] == 24
    assert [(t["tool_id"], t["tokens_saved"]) for t in body["tools"]] == [
        ("cursor", 35),
        ("claude-code", 27),
    ]
    cc = body["tools"][1]
    assert cc["total_compressions"] == 1 and cc["total_embeddings"] == 30
    assert cc["avg_cache_hit_rate"] == pytest.approx(0.6)
    assert cc["active_sessions"] == 0 and body["tools"][0]["active_sessions"] == 1
    assert cc["sample_count"] == 12  # one per push of claude-code in the window
    assert body["total"] == {
        "tokens_saved": 62,
        "total_compressions": 1,
        "total_embeddings": 30,
        "active_sessions": 1,
    }


def test_compare_gives_each_named_tool_even_one_never_seen(base: str) -> None:
    body = get(base, "/metrics/compare", tool_ids="claude-code,nope").json()
    assert list(body) == ["claude-code", "nope"]
    assert body["claude-code"] == {
        "tokens_saved": 27,
        "total_embeddings": 30,
        "total_compressions": 1,
        "cache_hit_rate": pytest.approx(0.6),
        "compression_ratio": pytest.approx(0.4),
        "sample_count": 12,
    }
    assert body["nope"] == dict.fromkeys(body["nope"], 0)
    repeated = httpx.get(
        f"{base}/metrics/compare", params=[("tool_ids", "cursor"), ("tool_ids", "nope")]
    )
    assert repeated.json()["cursor"]["tokens_saved"] == 35


def test_session_metrics_cover_the_whole_session(base: str) -> None:
    assert get(base, "/sessions/s-1/metrics").json() == {
        "session_id": "s-1",
        "total_embeddings": 30,
        "total_compressions": 1,
        "tokens_saved": 27,
        "avg_cache_hit_rate": pytest.approx(0.6),
        "avg_compression_ratio": pytest.approx(0.4),
        "sample_count": 12,
    }
    # Older than any default window, still all of it.
    assert get(base, "/sessions/s-old/metrics").json()["tokens_saved"] == 8
    never = get(base, "/sessions/never/metrics").json()
    assert never["session_id"] == "never" and never["sample_count"] == 0
    assert never["tokens_saved"] == 0


def test_token_savings_per_hour(base: str) -> None:
    body = get(base, "/metrics/token-savings", tenant_id="local").json()
    assert body["total_saved"] == 62
    assert sum(h["tokens_saved"] for h in body["time_series"]) == 62
    for hour in body["time_series"]:
        assert hour["timestamp"].endswith(":00:00.000Z") and hour["tokens_saved"] > 0
        assert hour["cost_saved"] == round(hour["tokens_saved"] / 1000 * 0.015, 2)
    assert body["savings_rate"] == 62 // 24
    assert body["projected_monthly"] == body["savings_rate"] * 24 * 30
    assert (body["hours_analyzed"], body["total_cost_saved"]) == (24, round(62 / 1000 * 0.015, 2))


def test_history_rows_carry_old_columns_and_reset_aware_deltas(base: str) -> None:
    body = get(base, "/metrics/history", tool_id="claude-code").json()
    assert body["hours"] == 24 and body["count"] == len(body["history"]) == 12
    saved = [r for r in body["history"] if "tokens_saved" in r]
    assert [(r["tokens_saved"], r["tokens_saved_delta"]) for r in saved] == [
        (1000, None),  # a series' first sample has no delta
        (1010, 10),
        (1015, 5),
        (5, 5),  # the restart: new work, not -1010
        (12, 7),
    ]
    first = saved[0]
    assert (first["service"], first["tool_id"], first["session_id"], first["tenant_id"]) == (
        "compression", "claude-code", "s-1", "local")  # fmt: skip
    assert [r["timestamp"] for r in body["history"]] == sorted(
        r["timestamp"] for r in body["history"]
    )
    rates = [r["cache_hit_rate"] for r in body["history"] if "cache_hit_rate" in r]
    assert rates == [0.5, 0.7]
    newest = get(base, "/metrics/history", tool_id="claude-code", limit=2).json()["history"]
    assert newest == body["history"][-2:]


def test_current_nests_the_latest_values_per_source(base: str) -> None:
    body = get(base, "/metrics/current", tenant_id="local", tool_id="claude-code").json()
    assert body["compression"] == {
        "status": "healthy",
        "metrics": {
            "total_tokens_saved": 12,
            "total_compressions": 4,
            "avg_compression_ratio": 0.4,
        },
    }
    assert body["embeddings"]["mlx_metrics"] == {"total_embeddings": 130, "cache_hit_rate": 0.7}
    assert datetime.fromisoformat(body["timestamp"]) <= utcnow()


def test_current_shows_a_failing_source_with_its_error(tmp_path: Path, upstream: Upstream) -> None:
    good = orjson.dumps({"metrics": {"total_compressions": 7}})
    config = Config(
        sources=[
            SourceConfig(name="compression", url=upstream.script("/ok", Reply(body=good))),
            SourceConfig(name="embeddings", url=upstream.script("/bad", Reply(503, b""))),
        ]
    )
    with serve(create_app(Settings(db=tmp_path / "cur.duckdb"), config)) as url:
        body = wait_for(
            lambda: (
                "embeddings" in (b := get(url, "/metrics/current").json())
                and "compression" in b
                and b
            )
        )
    assert body["compression"] == {"status": "healthy", "metrics": {"total_compressions": 7}}
    assert body["embeddings"] == {"status": "down", "error": "HTTP 503 Service Unavailable"}


@pytest.mark.parametrize(
    ("route", "params", "needle"),
    [
        ("/metrics/aggregates", {"hours": "0"}, "hours"),
        ("/metrics/aggregates", {"hours": "-1"}, "hours"),
        ("/metrics/history", {"hours": "lots"}, "hours"),
        ("/metrics/history", {"limit": "0"}, "limit"),
        ("/metrics/token-savings", {"hours": "721"}, "hours"),
        ("/metrics/by-tool", {"tool_id": "x"}, "tool_id"),
        ("/metrics/compare", {}, "tool_ids"),
        ("/metrics/compare", {"tool_ids": "a,,b"}, "tool_ids"),
        ("/metrics/current", {"bogus": "1"}, "bogus"),
        ("/sessions/s-1/metrics", {"hours": "24"}, "hours"),
        ("/metrics/aggregates", {"tenant_id": "a b"}, "tenant_id"),
    ],
)
def test_bad_parameters_are_422_with_a_message(
    base: str, route: str, params: dict[str, str], needle: str
) -> None:
    response = get(base, route, **params)
    assert response.status_code == 422, response.text
    assert needle in response.json()["error"]


@pytest.mark.parametrize("evil", ["x' OR '1'='1", "claude-code'; DROP TABLE samples; --"])
def test_injection_strings_match_nothing(base: str, evil: str) -> None:
    assert saved(base, tool_id=evil) == 0
    assert get(base, f"/sessions/{evil}/metrics").json()["sample_count"] == 0
    assert get(base, "/metrics/compare", tool_ids=evil).json()[evil]["sample_count"] == 0
    assert saved(base, tool_id="claude-code") == 27


def test_metrics_latest_gives_the_latest_stored_values_under_the_old_names(base: str) -> None:
    local = get(base, "/metrics/latest", tenant_id="local").json()
    fields = {"timestamp", "tokens_saved", "total_compressions", "compression_ratio",
              "total_embeddings", "cache_hit_rate", "cache_hits", "cache_misses"}  # fmt: skip
    assert set(local) == fields
    # Counters: each series' latest (claude-code 12, cursor 80 and its pushed 5, s-old 9).
    assert local["tokens_saved"] == 12 + 80 + 5 + 9
    assert (local["total_compressions"], local["total_embeddings"]) == (4, 130)
    assert (local["cache_hit_rate"], local["compression_ratio"]) == (0.7, 0.4)
    assert (local["cache_hits"], local["cache_misses"]) == (0, 0)
    acme = get(base, "/metrics/latest", tenant_id="acme").json()
    assert acme["tokens_saved"] == 2000 and acme["total_embeddings"] == 0
    assert get(base, "/metrics/latest", hours="1").status_code == 422


def test_metrics_tool_gives_totals_reset_aware_and_averages_over_samples(base: str) -> None:
    body = get(base, "/metrics/tool/claude-code", hours=24).json()
    assert (body["tool_id"], body["hours"]) == ("claude-code", 24)
    m = body["metrics"]
    assert (m["total_tokens_saved"], m["total_compressions"], m["total_embeddings"]) == (27, 1, 30)
    assert m["avg_embeddings"] == 115 and m["avg_cache_hit_rate"] == pytest.approx(0.6)
    assert m["avg_tokens_saved"] == pytest.approx((1000 + 1010 + 1015 + 5 + 12) / 5)
    assert m["avg_compression_ratio"] == pytest.approx(0.4)
    assert m["sample_count"] == 12  # one per push of the tool in the window
    assert (m["avg_quality_score"], m["avg_patterns"], m["max_patterns"]) == (0.0, 0.0, 0)
    nothing = get(base, "/metrics/tool/nobody").json()["metrics"]
    assert nothing["sample_count"] == 0 and nothing["total_tokens_saved"] == 0


def test_metrics_tool_history_is_the_history_of_that_tool(base: str) -> None:
    body = get(base, "/metrics/tool/cursor/history", hours=24).json()
    same = get(base, "/metrics/history", hours=24, tool_id="cursor").json()
    assert body == {"tool_id": "cursor", "hours": 24, "history": same["history"],
                    "count": same["count"]}  # fmt: skip
    assert body["count"] > 0 and all(row["tool_id"] == "cursor" for row in body["history"])


def test_current_is_one_snapshot_while_ticks_commit(tmp_path: Path) -> None:
    """Each source's values and its status come from the same moment: while ticks commit,
    a source is never shown `healthy` without the values its scrape brought."""
    db = Database(tmp_path / "snap.duckdb")
    ticks = 0

    async def write(stop: threading.Event) -> None:
        nonlocal ticks
        writer = Writer(db, AppendSignal())
        await writer.start()
        while not stop.is_set():
            now = utcnow()
            source = f"s{ticks}"  # a new source each tick: its values and status arrive together
            await writer.append(
                [SampleRow(now, "local", None, None, source, "total", "counter", 1.0)],
                [ScrapeRow(now, "local", None, source, True, 0.001, None)],
            )
            ticks += 1
        await writer.close()

    stop = threading.Event()
    thread = threading.Thread(target=asyncio.run, args=(write(stop),))
    thread.start()
    try:
        wait_for(lambda: ticks > 0)
        for _ in range(300):
            snapshot = db.read_sync(lambda cur: current(cur, SampleFilters(), utcnow()))
            shown = {k: v for k, v in snapshot.items() if k != "timestamp"}
            assert all("total" in v for v in shown.values()), shown
    finally:
        stop.set()
        thread.join()
        db.close()
    assert ticks > 10
