"""`GET /metrics`: the service's own metrics in the Prometheus text format, on a registry
the app owns (no process-global state: two apps in one process each have their own).

Histograms are observed as things happen, through hooks the stages are given (they do
not import this module); everything the stages already count is read from them when
scraped, so nothing is counted twice. All of it runs on the event loop, like `/health`,
and waits on no stream or database work."""

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector as MetricsCollector

from ingest.collector import Collector
from ingest.jobs import CollectionJobs
from ingest.scrape import Scrape
from ingest.writer import Writer
from schemas.models import NoParams
from schemas.outcomes import Outcome
from stream.hub import Hub
from stream.redis_stream import RedisPublisher
from stream.replay import ReplayGate

router = APIRouter()

PREFIX = "omnimetrics_"
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ASGI = Callable[[Any, Any, Any], Any]


class Metrics:
    """The app's registry and the histograms and counters observed as things happen."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.scrape_seconds = Histogram(
            f"{PREFIX}scrape_duration_seconds",
            "A source's scrape: the target's time, from the request to its last byte.",
            ["tenant_id", "source"],
            registry=r,
        )

        def fast(name: str, doc: str) -> Histogram:  # times of milliseconds
            return Histogram(f"{PREFIX}{name}", doc, registry=r, buckets=FAST_BUCKETS)

        self.commit_seconds = fast(
            "commit_seconds", "The writer's transactions: insert and commit."
        )
        self.fanout_seconds = fast(
            "stream_fanout_seconds",
            "A live batch from its dispatch until every client's connection has it.",
        )
        self.commit_to_sent_seconds = fast(
            "stream_commit_to_sent_seconds",
            "A live batch from its commit until every client's connection has it.",
        )
        self.pushes = Counter(
            f"{PREFIX}pushes", "POST /ingest answers, by HTTP status.", ["status"], registry=r
        )

    def observe_scrape(self, tenant_id: str, scrape: Scrape) -> None:
        self.scrape_seconds.labels(tenant_id, scrape.source.name).observe(scrape.duration_seconds)

    def observe_delivery(self, commit_to_sent: float, fanout: float) -> None:
        self.commit_to_sent_seconds.observe(commit_to_sent)
        self.fanout_seconds.observe(fanout)

    def count_pushes(self, app: ASGI) -> ASGI:
        """`app`, with the status of every `POST /ingest` answer counted (those the guard
        gives, 401 or 413, included)."""

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["path"] != "/ingest":
                await app(scope, receive, send)
                return

            async def send_counted(message: Any) -> None:
                if message["type"] == "http.response.start":
                    self.pushes.labels(str(message["status"])).inc()
                await send(message)

            await app(scope, receive, send_counted)

        return counted


@dataclass
class Stages:
    """What the scrape-time collector reads."""

    collector: Collector
    jobs: CollectionJobs
    writer: Writer
    hub: Hub
    replay: ReplayGate
    outcomes: Mapping[str, Outcome]
    db_path: str
    publisher: RedisPublisher | None = None


class StageMetrics(MetricsCollector):
    """The stages' own counts and states, read when `/metrics` is scraped."""

    def __init__(self, stages: Stages) -> None:
        self.stages = stages

    def collect(self) -> Iterator[Metric]:
        s = self.stages
        yield from self._sources(s.collector)
        yield from self._ticks(s.jobs)
        yield from self._writer(s.writer)
        yield from self._streams(s.hub, s.replay)
        runs = CounterMetricFamily(
            f"{PREFIX}job_runs", "Runs of the recurring jobs.", labels=["job"]
        )
        failures = CounterMetricFamily(
            f"{PREFIX}job_failures", "Failed runs of the recurring jobs.", labels=["job"]
        )
        failing = GaugeMetricFamily(
            f"{PREFIX}job_failing", "1 while a job's latest run failed.", labels=["job"]
        )
        for name, outcome in s.outcomes.items():
            runs.add_metric([name], outcome.runs)
            failures.add_metric([name], outcome.failures)
            failing.add_metric([name], float(outcome.error is not None))
        yield from (runs, failures, failing)
        yield from _files(s.db_path)
        if s.publisher is not None:
            yield from _publisher(s.publisher)

    def _sources(self, collector: Collector) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            f"{PREFIX}source_up",
            "1 if a source's latest scrape worked.",
            labels=["tenant_id", "source"],
        )
        samples = GaugeMetricFamily(
            f"{PREFIX}scrape_samples",
            "Samples in a source's latest scrape.",
            labels=["tenant_id", "source"],
        )
        for (tenant_id, name), last in list(collector.last.items()):
            up.add_metric([tenant_id, name], float(last.up))
            samples.add_metric([tenant_id, name], len(last.samples))
        yield from (up, samples)

    def _ticks(self, jobs: CollectionJobs) -> Iterator[Metric]:
        run = CounterMetricFamily(
            f"{PREFIX}ticks", "Collection ticks run, per tenant.", labels=["tenant_id"]
        )
        skipped = CounterMetricFamily(
            f"{PREFIX}ticks_skipped",
            "Collection ticks that could not start on time.",
            labels=["tenant_id"],
        )
        failed = CounterMetricFamily(
            f"{PREFIX}ticks_failed",
            "Collection ticks that did not reach their commit.",
            labels=["tenant_id"],
        )
        for tenant_id, counts in list(jobs.counts.items()):
            run.add_metric([tenant_id], counts.run)
            skipped.add_metric([tenant_id], counts.skipped)
            failed.add_metric([tenant_id], counts.outcome.failures)
        yield from (run, skipped, failed)

    def _writer(self, writer: Writer) -> Iterator[Metric]:
        for name, doc, value in (
            ("rows_committed", "Sample rows committed.", writer.rows),
            ("batches_committed", "Batches committed (a tick or a push each).", writer.batches),
            (
                "transactions",
                "Transactions committed (pushes commit in groups).",
                writer.transactions,
            ),
            ("write_errors", "Transactions that failed (nothing of them stored).", writer.errors),
        ):
            yield CounterMetricFamily(f"{PREFIX}{name}", doc, value=value)
        yield GaugeMetricFamily(
            f"{PREFIX}last_seq", "The highest committed seq.", value=writer.last_seq
        )
        yield GaugeMetricFamily(
            f"{PREFIX}series", "Series known to the writer.", value=len(writer.series)
        )

    def _streams(self, hub: Hub, replay: ReplayGate) -> Iterator[Metric]:
        clients = GaugeMetricFamily(
            f"{PREFIX}stream_clients", "Open streams, by transport.", labels=["transport"]
        )
        for transport in ("ws", "sse"):
            clients.add_metric([transport], hub.transports[transport])
        yield clients
        yield GaugeMetricFamily(
            f"{PREFIX}stream_queued_bytes",
            "Bytes waiting in the stream clients' queues.",
            value=hub.queued_bytes(),
        )
        yield CounterMetricFamily(
            f"{PREFIX}stream_overflows",
            "Clients ended for falling too far behind (they resume).",
            value=hub.overflows,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}catch_up_clients", "Clients catching up now.", value=replay.replaying
        )
        yield CounterMetricFamily(
            f"{PREFIX}catch_up_reads", "Catch-up pages read from the database.", value=replay.pages
        )
        yield CounterMetricFamily(
            f"{PREFIX}catch_up_refused",
            "Clients told to come back later (WS 1013, SSE 503).",
            value=replay.refused,
        )


def _files(db_path: str) -> Iterator[Metric]:
    for name, path in (("database_bytes", db_path), ("wal_bytes", f"{db_path}.wal")):
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0  # no WAL between checkpoints
        yield GaugeMetricFamily(f"{PREFIX}{name}", f"Size of the file {path}.", value=size)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, params: Annotated[NoParams, Query()]) -> Response:
    """The Prometheus text exposition of the app's registry."""
    registry = cast(Metrics, request.state.metrics).registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _publisher(publisher: RedisPublisher) -> Iterator[Metric]:
    """The Redis Stream's publisher (`serve --redis-url`)."""
    yield GaugeMetricFamily(f"{PREFIX}redis_connected", "1 while the publisher reaches Redis.",
                            value=float(publisher.connected))  # fmt: skip
    yield GaugeMetricFamily(f"{PREFIX}redis_published_seq", "The Redis stream's top, as the "
                            "publisher knows it.", value=publisher.published)  # fmt: skip
    yield GaugeMetricFamily(f"{PREFIX}redis_unpublished_seqs", "Seqs committed and not yet in "
                            "the Redis stream.", value=publisher.behind)  # fmt: skip
    yield CounterMetricFamily(f"{PREFIX}redis_entries", "Entries appended to the Redis stream.",
                              value=publisher.entries)  # fmt: skip
