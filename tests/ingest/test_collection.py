"""Collection against real local HTTP upstreams, written through the real writer."""

import gzip
import time
from collections.abc import AsyncIterator, Sequence

import orjson
import pytest

from ingest.collector import Collector, http_client
from ingest.jobs import CollectionJobs
from ingest.sources import Source
from ingest.writer import Writer
from schemas.db import Database
from schemas.signals import AppendSignal
from tests.helpers import Reply, Upstream, free_port

pytestmark = pytest.mark.anyio


def stats(total: int) -> Reply:
    doc = {"status": "healthy", "metrics": {"total_tokens_saved": total, "cache_hit_rate": 0.5}}
    return Reply(body=orjson.dumps(doc))


@pytest.fixture
async def writer(db: Database) -> AsyncIterator[Writer]:
    w = Writer(db, AppendSignal())
    await w.start()
    yield w
    await w.close()


async def run_ticks(db: Database, writer: Writer, sources: Sequence[Source], n: int) -> None:
    async with http_client(len(sources)) as client:
        jobs = CollectionJobs(Collector(client, sources), writer, {"local": 1.0})
        for _ in range(n):
            await jobs.tick("local")


async def test_restart_and_failed_scrape_give_reset_aware_deltas(
    db: Database, writer: Writer, upstream: Upstream
) -> None:
    url = upstream.script(
        "/stats",
        stats(1000), stats(1010), Reply(500, b"boom"), stats(1015), stats(5), stats(12),
    )  # fmt: skip
    await run_ticks(db, writer, [Source("compression", url)], 6)

    cur = db.cursor()
    metric = "metrics.total_tokens_saved"
    rows = cur.execute(
        "SELECT value, delta FROM sample_deltas WHERE metric = $m ORDER BY seq", {"m": metric}
    ).fetchall()
    assert [v for v, _ in rows] == [1000, 1010, 1015, 5, 12]
    assert [d for _, d in rows] == [None, 10, 5, 5, 7]
    ups = cur.execute("SELECT value FROM samples WHERE metric = 'up' ORDER BY seq").fetchall()
    assert [v for (v,) in ups] == [1, 1, 0, 1, 1, 1]
    errors = cur.execute("SELECT up, error FROM scrapes ORDER BY batch").fetchall()
    assert errors[2] == (False, "HTTP 500 Internal Server Error")
    assert all(up and err is None for up, err in errors[:2] + errors[3:])
    kinds = dict(cur.execute("SELECT DISTINCT metric, kind FROM samples").fetchall())
    assert kinds[metric] == "counter"
    assert kinds["metrics.cache_hit_rate"] == "gauge"
    assert kinds["scrape_duration_seconds"] == "gauge"


async def test_hanging_upstream_costs_only_its_own_sample(
    db: Database, writer: Writer, upstream: Upstream
) -> None:
    fast = upstream.script("/fast", stats(1))
    slow = upstream.script("/slow", Reply(delay=60))
    sources = [Source("fast", fast), Source("slow", slow, timeout_seconds=0.5)]
    started = time.monotonic()
    await run_ticks(db, writer, sources, 1)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5, f"one tick took {elapsed:.2f} s with a 0.5 s timeout"
    rows = (
        db.cursor()
        .execute("SELECT source, up, duration_seconds, error FROM scrapes ORDER BY source")
        .fetchall()
    )
    (f_src, f_up, f_dur, f_err), (s_src, s_up, s_dur, s_err) = rows
    assert (f_src, f_up, f_err) == ("fast", True, None)
    assert f_dur < 0.4  # the fast source was not held up by the slow one
    assert (s_src, s_up, s_err) == ("slow", False, "timed out after 0.5 s")
    assert 0.45 <= s_dur < 1.0


async def test_timeout_is_clamped_below_the_interval(
    db: Database, writer: Writer, upstream: Upstream
) -> None:
    slow = upstream.script("/slow", Reply(delay=60))
    async with http_client(1) as client:
        jobs = CollectionJobs(
            Collector(client, [Source("slow", slow, timeout_seconds=30)]), writer, {"local": 0.5}
        )
        started = time.monotonic()
        await jobs.tick("local")
    assert time.monotonic() - started < 0.5
    (error,) = db.cursor().execute("SELECT error FROM scrapes").fetchall()[0]
    assert error == "timed out after 0.4 s"


async def test_one_upstream_request_per_source_per_tick(
    db: Database, writer: Writer, upstream: Upstream
) -> None:
    sources = [Source(f"s{i}", upstream.script(f"/s{i}", stats(i))) for i in range(5)]
    await run_ticks(db, writer, sources, 3)
    assert dict(upstream.requests) == {f"/s{i}": 3 for i in range(5)}


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply(body=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
         "body is not JSON"),
        (Reply(body=b'{"metrics": {"total": NaN}}'), "body is not JSON"),
        (Reply(body=b'{"total": 1e999}'), "body is not JSON"),
        (Reply(body=b"[" * 100_000), "body is not JSON"),
        (Reply(body=b'{"a": "' + b"x" * (10 * 1024 * 1024) + b'"}'),
         "over the 10485760-byte limit"),
        (Reply(404, b"no"), "HTTP 404 Not Found"),
    ],
    ids=["html", "nan", "infinity", "deep-nesting", "over-10MB", "not-found"],
)  # fmt: skip
async def test_malformed_body_is_a_failed_scrape_with_a_clear_error(
    db: Database, writer: Writer, upstream: Upstream, reply: Reply, error: str
) -> None:
    good = upstream.script("/good", stats(7))
    bad = upstream.script("/bad", reply)
    await run_ticks(db, writer, [Source("good", good), Source("bad", bad)], 1)
    rows = dict(db.cursor().execute("SELECT source, error FROM scrapes").fetchall())
    assert rows["good"] is None
    assert error in rows["bad"]
    values = (
        db.cursor()
        .execute("SELECT source, value FROM samples WHERE metric = 'up' ORDER BY source")
        .fetchall()
    )
    assert values == [("bad", 0.0), ("good", 1.0)]


async def test_unreachable_upstream_records_connection_refused(
    db: Database, writer: Writer
) -> None:
    url = f"http://127.0.0.1:{free_port()}/stats"
    await run_ticks(db, writer, [Source("compression", url)], 1)
    (error,) = db.cursor().execute("SELECT error FROM scrapes").fetchall()[0]
    assert error == "connection refused"


PROM = b"""# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{code="200",path="/a"} 10
http_requests_created{code="200",path="/a"} 1.7e9
# TYPE queue_depth gauge
queue_depth 3
# TYPE latency_seconds histogram
latency_seconds_bucket{le="0.1"} 4
latency_seconds_bucket{le="+Inf"} 5
latency_seconds_count 5
latency_seconds_sum 0.9
# TYPE rpc summary
rpc{quantile="0.99"} 0.3
rpc_count 7
rpc_sum 1.2
"""


async def test_prometheus_text_keeps_labels_and_types(
    db: Database, writer: Writer, upstream: Upstream
) -> None:
    url = upstream.script("/metrics", Reply(body=PROM, content_type="text/plain"))
    await run_ticks(db, writer, [Source("api", url, format="prometheus")], 1)
    got = dict(
        db.cursor()
        .execute(
            "SELECT name, kind FROM series WHERE metric NOT IN ('up', 'scrape_duration_seconds')"
        )
        .fetchall()
    )
    assert got == {
        'http_requests_total{code="200",path="/a"}': "counter",
        "queue_depth": "gauge",
        'latency_seconds_bucket{le="0.1"}': "counter",
        'latency_seconds_bucket{le="+Inf"}': "counter",
        "latency_seconds_count": "counter",
        "latency_seconds_sum": "counter",
        'rpc{quantile="0.99"}': "gauge",
        "rpc_count": "counter",
        "rpc_sum": "counter",
    }


async def test_kind_overrides_from_config_win(
    db: Database, writer: Writer, upstream: Upstream
) -> None:
    url = upstream.script("/stats", stats(3))
    source = Source("c", url, kinds={"metrics.cache_hit_rate": "counter"})
    await run_ticks(db, writer, [source], 1)
    kind = (
        db.cursor()
        .execute("SELECT kind FROM samples WHERE metric = 'metrics.cache_hit_rate'")
        .fetchall()
    )
    assert kind == [("counter",)]


async def test_compressed_body_is_decoded(db: Database, writer: Writer, upstream: Upstream) -> None:
    body = gzip.compress(orjson.dumps({"metrics": {"total_tokens_saved": 41}}))
    url = upstream.script("/stats", Reply(body=body, headers=(("Content-Encoding", "gzip"),)))
    await run_ticks(db, writer, [Source("c", url)], 1)
    got = (
        db.cursor()
        .execute("SELECT value FROM samples WHERE metric = 'metrics.total_tokens_saved'")
        .fetchall()
    )
    assert got == [(41.0,)]
