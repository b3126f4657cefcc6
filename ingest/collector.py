"""One collection tick: every source of a tenant scraped concurrently, as one batch."""

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import aiohttp
import numpy as np
import pyarrow as pa

from ingest.parse import Samples
from ingest.prometheus import PrometheusParser
from ingest.scrape import Scrape, scrape
from ingest.sources import Source
from schemas.labels import NO_LABELS
from schemas.rows import SAMPLE_SCHEMA, ScrapeRow
from schemas.tenants import TenantRegistry, feature_enabled
from schemas.times import utcnow

# A tick's scrapes should end inside its interval (at most two ticks of a tenant run at
# once, and one due beyond that is counted as skipped: jobs.py), so a source's timeout is
# clamped below the interval, leaving time to parse and write.
TIMEOUT_SHARE_OF_INTERVAL = 0.8


def http_client(n_sources: int) -> aiohttp.ClientSession:
    """The one session every scrape shares: a connection per source, kept alive between
    ticks, no proxy lookups; each scrape bounds its own time (scrape.py)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(100, 2 * n_sources), limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )


class Tick(NamedTuple):
    tenant_id: str
    samples: pa.Table  # SAMPLE_SCHEMA's columns (some dictionary-encoded)
    scrapes: list[ScrapeRow]


def _dictionary(values: list[str | None], index: np.ndarray) -> pa.DictionaryArray:
    """`values[index[i]]` per row, as a dictionary array (NULL where the value is None)."""
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    position = {v: i for i, v in enumerate(distinct)}
    codes = np.array([position.get(v, -1) if v is not None else -1 for v in values], np.int32)
    rows = codes[index] if len(codes) else np.zeros(0, np.int32)
    missing = rows < 0
    indices = pa.array(np.where(missing, 0, rows), mask=missing if missing.any() else None)
    return pa.DictionaryArray.from_arrays(indices, pa.array(distinct, pa.string()))


def tick_rows(tenant_id: str, results: Sequence[Scrape]) -> Tick:
    """Samples and scrape records for one tick, as columns, stamped with the tick's time
    (or a sample's explicit time). Every scrape also stores `up` and its duration."""
    ts = utcnow()
    tick_us = int(ts.timestamp() * 1_000_000)
    metric: list[str] = []
    kind: list[str] = []
    value: list[float] = []
    labels: list[str] = []
    counts: list[int] = []
    explicit: list[tuple[int, list[int | None]]] = []  # (first row, the source's stamps)
    scrapes: list[ScrapeRow] = []
    for result in results:
        src, got = result.source, result.samples
        if got.timestamp_ms is not None:
            explicit.append((len(metric), got.timestamp_ms))
        metric += got.metric
        kind += got.kind
        value += got.value
        labels += got.labels
        metric += _OURS
        kind += _GAUGES
        value += (float(result.up), result.duration_seconds)
        labels += _NO_LABELS
        counts.append(len(got) + 2)
        scrapes.append(ScrapeRow(ts, tenant_id, src.tool_id, src.name, result.up,
                                 result.duration_seconds, result.error))  # fmt: skip
    n = len(metric)
    stamps = np.full(n, tick_us, np.int64)
    for first, own in explicit:
        for i, stamp in enumerate(own):
            if stamp is not None:
                stamps[first + i] = stamp * 1000
    which = np.repeat(np.arange(len(results)), counts)
    table = pa.Table.from_arrays(
        [
            pa.array(stamps, pa.timestamp("us", tz="UTC")),
            _dictionary([tenant_id], np.zeros(n, np.int64)),
            _dictionary([r.source.tool_id for r in results], which),
            pa.nulls(n, pa.string()),
            _dictionary([r.source.name for r in results], which),
            pa.array(metric, pa.string()),
            pa.array(kind, pa.string()),
            pa.array(value, pa.float64()),
            pa.array(labels, pa.string()),
        ],
        names=SAMPLE_SCHEMA.names,
    )
    return Tick(tenant_id, table, scrapes)


_OURS = ("up", "scrape_duration_seconds")
_GAUGES = ("gauge", "gauge")
_NO_LABELS = (NO_LABELS, NO_LABELS)


def _result(task: asyncio.Task[Scrape], source: Source, interval: float, started: float) -> Scrape:
    if task.done():
        return task.result()
    task.cancel()
    spent = time.perf_counter() - started
    return Scrape(
        source, Samples(), spent, f"abandoned: not done within the {interval:g} s interval"
    )


class Collector:
    """Scrapes sources through one shared HTTP client; remembers each source's last scrape."""

    def __init__(
        self,
        client: aiohttp.ClientSession,
        sources: Sequence[Source],
        tenants: TenantRegistry | None = None,
        observe_scrape: Callable[[str, Scrape], None] | None = None,
    ) -> None:
        self._client = client
        self._observe_scrape = observe_scrape  # each scrape, with its tenant (`/metrics`)
        self.sources = list(sources)
        self._tenants = tenants if tenants is not None else TenantRegistry()
        self.last: dict[tuple[str, str], Scrape] = {}
        # Each Prometheus source's parser remembers its series between scrapes.
        self._parsers: dict[tuple[str, str], PrometheusParser] = {}

    def _parser(self, source: Source) -> PrometheusParser | None:
        if source.format != "prometheus":
            return None
        key = (source.tenant_id, source.name)
        parser = self._parsers.get(key)
        if parser is None:
            parser = self._parsers[key] = PrometheusParser()
        return parser

    def tenants(self) -> list[str]:
        return sorted({source.tenant_id for source in self.sources})

    async def collect(self, tenant_id: str, interval: float) -> Tick:
        """Scrape every source of `tenant_id` whose feature is on, all at once; a hanging
        one costs only its own time."""
        settings = self._tenants.get(tenant_id)
        sources = [
            s
            for s in self.sources
            if s.tenant_id == tenant_id and feature_enabled(settings, s.feature)
        ]
        cap = interval * TIMEOUT_SHARE_OF_INTERVAL
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(
                scrape(self._client, s, min(s.timeout_seconds, cap), started, self._parser(s))
            )
            for s in sources
        ]
        if tasks:  # what is not done when the next tick is due is abandoned
            await asyncio.wait(tasks, timeout=interval)
        results = [_result(task, source, interval, started) for task, source in
                   zip(tasks, sources, strict=True)]  # fmt: skip
        for result in results:
            self.last[(tenant_id, result.source.name)] = result
            if self._observe_scrape is not None:
                self._observe_scrape(tenant_id, result)
        return tick_rows(tenant_id, results)
