"""Prometheus exposition stored as exposed (CONTRACT.md "Series and labels"): each fault
the old parser had, on real exposition text (prometheus-client's own output and
node_exporter's shape), through every parser implementation the code can use."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
)

from ingest.parse import Parsed, ParseError
from ingest.prometheus import PrometheusParser, parse_prometheus
from ingest.sources import Source
from ingest.writer import Writer
from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings, SourceConfig
from query.history import increase_table
from query.sql import where
from schemas.db import Database
from schemas.models import SampleFilters
from tests.helpers import Reply, Upstream, serve, wait_for
from tests.ingest.test_collection import run_ticks, writer  # noqa: F401  (a fixture)


def remembering(body: bytes, *args: Any) -> list[Parsed]:
    """The collector's way: one parser per source, whose second scrape of the same text
    goes through what it remembers of each series (it must give the same samples)."""
    parser = PrometheusParser()
    first = parser.parse(body, *args).rows()
    again = parser.parse(body, *args).rows()
    assert again == first
    return again


# Every implementation of the text format the collector may use.
PARSERS: list[Callable[..., list[Parsed]]] = [parse_prometheus, remembering]


@pytest.fixture(params=PARSERS, ids=lambda p: p.__name__)
def parse(request: pytest.FixtureRequest) -> Callable[..., list[Parsed]]:
    parser: Callable[..., list[Parsed]] = request.param
    return parser


def by_name(parsed: list[Parsed]) -> dict[tuple[str, str], Parsed]:
    return {(p.metric, p.labels): p for p in parsed}


NODE_OS_INFO = (
    'node_os_info{build_id="",id="debian",id_like="",image_id="",image_version="",'
    'name="Debian GNU/Linux",pretty_name="Debian GNU/Linux 12 (bookworm)",variant="",'
    'variant_id="",version="12 (bookworm)",version_codename="bookworm",version_id="12"} 1'
)
# What node_exporter serves, in its shape: HELP/TYPE per family, untyped counters from
# /proc/net/netstat, gauges, counters with labels, a long info series.
NODE_EXPORTER = f"""# HELP node_netstat_Tcp_InSegs Statistic TcpInSegs.
# TYPE node_netstat_Tcp_InSegs untyped
node_netstat_Tcp_InSegs 1.234567e+06
# HELP node_netstat_Tcp_OutSegs Statistic TcpOutSegs.
# TYPE node_netstat_Tcp_OutSegs untyped
node_netstat_Tcp_OutSegs 987654
# HELP node_load1 1m load average.
# TYPE node_load1 gauge
node_load1 0.42
# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{{cpu="0",mode="idle"}} 12345.67
node_cpu_seconds_total{{cpu="0",mode="user"}} 234.5
# HELP node_os_info A metric with a constant '1' value labeled by os-release fields.
# TYPE node_os_info gauge
{NODE_OS_INFO}
# HELP legacy_hits A counter exposed without _total, as older exporters do.
# TYPE legacy_hits counter
legacy_hits 40
# HELP up Whether the exporter's own upstream answered.
# TYPE up gauge
up 0
# TYPE scrape_duration_seconds gauge
scrape_duration_seconds 0.25
"""


def client_exposition() -> bytes:
    """prometheus-client's own text output for a registry with every metric type."""
    registry = CollectorRegistry()
    requests = Counter("http_requests", "Requests.", ["code"], registry=registry)
    requests.labels("200").inc(7)
    requests.labels("500").inc(2)
    Counter("tickets", "Tickets.", registry=registry).inc(3)
    Gauge("orders_created", "A gauge whose name ends in _created.", registry=registry).set(4)
    Histogram("latency_seconds", "Latency.", buckets=(0.1, 1.0), registry=registry).observe(0.5)
    Summary("rpc_seconds", "RPC.", registry=registry).observe(0.2)
    Info("build", "Build.", registry=registry).info({"version": "1.2"})
    Enum("state", "State.", states=["up", "down"], registry=registry).state("down")
    return generate_latest(registry)


def test_prometheus_client_output_is_stored_as_exposed(parse: Callable[..., Any]) -> None:
    got = {(p.metric, p.labels): p.kind for p in parse(client_exposition())}
    assert got[("http_requests_total", '{"code":"200"}')] == "counter"
    assert got[("tickets_total", "{}")] == "counter"
    assert got[("latency_seconds_bucket", '{"le":"+Inf"}')] == "counter"
    assert got[("latency_seconds_count", "{}")] == "counter"
    assert got[("rpc_seconds_sum", "{}")] == "counter"
    assert got[("build_info", '{"version":"1.2"}')] == "gauge"
    assert got[("state", '{"state":"down"}')] == "gauge"
    # Creation times of its counter, histogram and summary are not samples...
    names = {metric for metric, _ in got}
    for created in ("http_requests_created", "tickets_created", "latency_seconds_created",
                    "rpc_seconds_created"):  # fmt: skip
        assert created not in names
    # ...but a gauge that is merely named `*_created` is.
    assert got[("orders_created", "{}")] == "gauge"


def test_a_gauge_named_created_is_kept(parse: Callable[..., Any]) -> None:
    text = b"# TYPE tickets_created gauge\ntickets_created 4\n"
    assert [(p.metric, p.kind, p.value) for p in parse(text)] == [("tickets_created", "gauge", 4)]


def test_created_is_skipped_only_beside_its_counter_or_histogram(
    parse: Callable[..., Any],
) -> None:
    text = b"""# TYPE jobs_total counter
jobs_total 5
# TYPE jobs_created gauge
jobs_created 1.7e9
# TYPE h histogram
h_count 1
h_sum 2
h_created 1.7e9
orphan_created 9
"""
    assert [p.metric for p in parse(text)] == ["jobs_total", "h_count", "h_sum", "orphan_created"]


def test_a_counter_keeps_its_exposed_name_without_total(parse: Callable[..., Any]) -> None:
    parsed = parse(b"# TYPE legacy_hits counter\nlegacy_hits 3\n")
    assert [(p.metric, p.kind) for p in parsed] == [("legacy_hits", "counter")]


def test_untyped_samples_stay_untyped(parse: Callable[..., Any]) -> None:
    got = {p.metric: p.kind for p in parse(NODE_EXPORTER.encode())}
    assert got["node_netstat_Tcp_InSegs"] == got["node_netstat_Tcp_OutSegs"] == "untyped"
    assert got["node_load1"] == "gauge" and got["node_cpu_seconds_total"] == "counter"
    assert parse(b"no_type_line 1\n")[0].kind == "untyped"


def test_source_kinds_override_by_bare_name(parse: Callable[..., Any]) -> None:
    text = b'# TYPE q gauge\nq{a="1"} 2\nnode_x 5\n'
    got = {p.metric: p.kind for p in parse(text, {"q": "counter", "node_x": "counter"})}
    assert got == {"q": "counter", "node_x": "counter"}


def test_infinite_values_are_kept_and_nan_is_skipped(parse: Callable[..., Any]) -> None:
    text = b'# TYPE g gauge\ng{s="a"} +Inf\ng{s="b"} -Inf\ng{s="c"} NaN\n'
    assert [(p.labels, p.value) for p in parse(text)] == [
        ('{"s":"a"}', float("inf")), ('{"s":"b"}', float("-inf"))]  # fmt: skip


def test_explicit_timestamps_are_kept(parse: Callable[..., Any]) -> None:
    parsed = parse(b'# TYPE c counter\nc_total 5 1700000000123\nc_total{a="1"} 6\n')
    assert [p.timestamp_ms for p in parsed] == [1_700_000_000_123, None]


def test_labels_are_canonical_so_a_series_has_one_name(parse: Callable[..., Any]) -> None:
    text = b'label_order{b="1",a="2"} 1\nempty_label{a="",b="x"} 2\nesc{p="a\\"b\\\\c\\nd"} 3\n'
    assert [p.labels for p in parse(text)] == [
        '{"a":"2","b":"1"}', '{"b":"x"}', '{"p":"a\\"b\\\\c\\nd"}']  # fmt: skip


def test_an_exporters_own_up_is_kept_under_another_name(parse: Callable[..., Any]) -> None:
    got = {p.metric: p.value for p in parse(NODE_EXPORTER.encode())}
    assert got["exported_up"] == 0 and got["exported_scrape_duration_seconds"] == 0.25
    assert "up" not in got and "scrape_duration_seconds" not in got


def test_more_samples_than_the_limit_fail_the_parse(parse: Callable[..., Any]) -> None:
    text = "".join(f'm{{i="{i}"}} {i}\n' for i in range(11)).encode()
    assert len(parse(text, None, 11)) == 11
    with pytest.raises(ParseError, match="sample_limit"):
        parse(text, None, 10)


@pytest.mark.parametrize(
    "text",
    [b"9bad 1\n", b'm{0a="1"} 1\n', b"m{a=1} 1\n", b"m one\n", b"m 1 99999999999999999999\n"],
)
def test_malformed_exposition_is_a_parse_error_naming_the_line(
    parse: Callable[..., Any], text: bytes
) -> None:
    with pytest.raises(ParseError, match="line 1"):
        parse(text)


pytestmark = pytest.mark.anyio


async def test_the_scrape_stores_node_exporter_text_as_series(
    db: Database,
    writer: Writer,  # noqa: F811
    upstream: Upstream,
) -> None:
    """Untyped counters increase, the long info series is stored and found by its name,
    and our `up` is ours: one sample per tick, 1 while the exporter answers."""
    later = NODE_EXPORTER.replace("1.234567e+06", "1234600").replace("hits 40", "hits 47")
    later = later.encode()
    url = upstream.script("/metrics", Reply(body=NODE_EXPORTER.encode()), Reply(body=later))
    await run_ticks(db, writer, [Source("node", url, format="prometheus")], 2)
    cur = db.cursor()
    start = datetime.now(UTC) - timedelta(hours=1)
    end = datetime.now(UTC) + timedelta(minutes=1)
    filters = SampleFilters(metric="node_netstat_Tcp_InSegs")
    table = increase_table(cur, filters, [], start, end, 86_400)
    assert sum(table.column("value").to_pylist()) == 33
    hits = increase_table(cur, SampleFilters(metric="legacy_hits"), [], start, end, 86_400)
    assert sum(hits.column("value").to_pylist()) == 7  # found by its exposed name
    ups = cur.execute("SELECT value FROM samples WHERE metric = 'up' ORDER BY seq").fetchall()
    assert ups == [(1.0,), (1.0,)]
    (stored,) = cur.execute("SELECT name FROM series WHERE metric = 'node_os_info'").fetchall()[0]
    assert stored == (
        'node_os_info{id="debian",name="Debian GNU/Linux",'
        'pretty_name="Debian GNU/Linux 12 (bookworm)",version="12 (bookworm)",'
        'version_codename="bookworm",version_id="12"}'
    )
    # Found by its whole text form, as an old query named it (over 200 characters as
    # exposed; the cap is 1,024 everywhere).
    exposed = NODE_OS_INFO.rsplit(" ", 1)[0]
    assert len(exposed) > 200
    cond, args = where(SampleFilters(metric=exposed))
    joined = "points p JOIN series_keys k ON k.id = p.series_id"
    assert cur.execute(f"SELECT count(*) FROM {joined} WHERE {cond}", args).fetchall() == [(2,)]


async def test_a_scrape_over_its_sample_limit_fails_whole_with_up_0(
    db: Database,
    writer: Writer,  # noqa: F811
    upstream: Upstream,
) -> None:
    text = "".join(f'm{{i="{i}"}} {i}\n' for i in range(6)).encode()
    url = upstream.script("/metrics", Reply(body=text))
    source = Source("big", url, format="prometheus", sample_limit=5)
    await run_ticks(db, writer, [source], 1)
    cur = db.cursor()
    assert cur.execute("SELECT metric, value FROM samples ORDER BY seq").fetchall()[0] == (
        "up", 0.0)  # fmt: skip
    (error,) = cur.execute("SELECT error FROM scrapes").fetchall()[0]
    assert "sample_limit" in error and "5" in error
    assert cur.execute("SELECT count(*) FROM samples WHERE metric = 'm'").fetchall() == [(0,)]


def test_a_label_filter_and_group_by_over_an_exporter_with_restarts(tmp_path: Path) -> None:
    """A real prometheus-client registry, served as its exporter serves it, restarting
    once (a new registry from zero): the exact reset-aware increase per `code`."""
    steps = [
        {"200": 5, "500": 1},
        {"200": 9, "500": 1},
        {"200": 2, "500": 0},
        {"200": 6, "500": 4},
    ]  # fmt: skip  (the third is after the restart)
    registries = []
    for counts in steps:
        registry = CollectorRegistry()
        requests = Counter("http_requests", "Requests.", ["code", "method"], registry=registry)
        for code, n in counts.items():
            requests.labels(code, "get").inc(n)
        requests.labels("200", "post").inc(100)  # filtered out by method below
        registries.append(generate_latest(registry))
    with Upstream() as upstream:
        url = upstream.script("/metrics", *(Reply(body=b, content_type="text/plain")
                                            for b in registries))  # fmt: skip
        source = SourceConfig(name="api", url=url, format="prometheus")
        app = create_app(Settings(db=tmp_path / "e.duckdb"), Config(sources=[source]))
        with serve(app) as base:
            wait_for(lambda: upstream.requests["/metrics"] >= len(steps) + 1, timeout=30)
            params = {"metric": "http_requests_total", "labels": '{"method":"get"}',
                      "group_by": "labels.code", "step": "1d"}  # fmt: skip
            body = httpx.get(f"{base}/api/v1/increase", params=params).json()
    totals: dict[str, float] = {}
    for bucket in body["buckets"]:
        totals[bucket["labels.code"]] = totals.get(bucket["labels.code"], 0) + bucket["value"]
    # 200: +4, then the restart counts its 2, then +4; 500: 0, the restart's 0, then +4.
    assert totals == {"200": 10, "500": 4}
    assert body["total"] == 14


HEADS = ["m", "m_total", 'h_bucket{le="1"}', 'x{a="v 1",b="2"}', 'x{a="v\\"q"}']
TAILS = [" 1", " 2.5", " -3", " +Inf", " NaN", " 1 1700000000000", "\t4", " 5\t6", "  7", " ",
         " 1 2 3", " 1_000", " x", " 8 ", ""]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.tuples(st.sampled_from(HEADS), st.sampled_from(TAILS)), max_size=8),
       prefix=st.sampled_from(["", " ", "# TYPE m counter\n"]))  # fmt: skip
def test_a_remembering_parser_reads_any_text_as_a_fresh_one_does(
    lines: list[tuple[str, str]], prefix: str
) -> None:
    """After a scrape that taught it every series text, the remembering parser gives the
    same samples, or the same error, as a parser that remembers nothing."""
    parser = PrometheusParser()
    parser.parse("\n".join(f"{head} 0" for head in HEADS).encode())
    body = (prefix + "\n".join(head + tail for head, tail in lines)).encode()

    def outcome(p: PrometheusParser) -> object:
        try:
            return p.parse(body).rows()
        except ParseError as exc:
            return str(exc)

    assert outcome(parser) == outcome(PrometheusParser())
