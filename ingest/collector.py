"""One collection tick: every source of a tenant scraped concurrently, as one batch."""

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NamedTuple

import httpx

from ingest.scrape import Scrape, scrape
from ingest.sources import Source
from ingest.transport import AiohttpTransport
from schemas.rows import SampleRow, ScrapeRow
from schemas.tenants import TenantRegistry, feature_enabled
from schemas.times import utcnow

# A tick must finish inside its interval (APScheduler skips a run while the previous one
# is going), so a source's timeout is clamped below the interval, leaving time to write.
TIMEOUT_SHARE_OF_INTERVAL = 0.8


def http_client(n_sources: int) -> httpx.AsyncClient:
    """The one client every scrape shares: a connection per source, kept alive between
    ticks, no redirects, no proxy lookups; sent through aiohttp (see transport.py)."""
    transport = AiohttpTransport(max_connections=max(100, 2 * n_sources))
    return httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)


class Tick(NamedTuple):
    tenant_id: str
    samples: list[SampleRow]
    scrapes: list[ScrapeRow]


def tick_rows(tenant_id: str, results: Sequence[Scrape]) -> Tick:
    """Samples and scrape records for one tick, all stamped with the tick's time."""
    ts = utcnow()
    samples: list[SampleRow] = []
    scrapes: list[ScrapeRow] = []
    for result in results:
        src = result.source
        for metric, kind, value, labels, stamp in result.samples:
            at = ts if stamp is None else datetime.fromtimestamp(stamp / 1000, UTC)
            samples.append(
                SampleRow(at, tenant_id, src.tool_id, None, src.name, metric, kind, value, labels)
            )
        samples.append(
            SampleRow(ts, tenant_id, src.tool_id, None, src.name, "up", "gauge", float(result.up))
        )
        samples.append(
            SampleRow(
                ts,
                tenant_id,
                src.tool_id,
                None,
                src.name,
                "scrape_duration_seconds",
                "gauge",
                result.duration_seconds,
            )  # fmt: skip
        )
        scrapes.append(
            ScrapeRow(
                ts,
                tenant_id,
                src.tool_id,
                src.name,
                result.up,
                result.duration_seconds,
                result.error,
            )  # fmt: skip
        )
    return Tick(tenant_id, samples, scrapes)


def _result(task: asyncio.Task[Scrape], source: Source, interval: float, started: float) -> Scrape:
    if task.done():
        return task.result()
    task.cancel()
    spent = time.perf_counter() - started
    return Scrape(source, [], spent, f"abandoned: not done within the {interval:g} s interval")


class Collector:
    """Scrapes sources through one shared HTTP client; remembers each source's last scrape."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        sources: Sequence[Source],
        tenants: TenantRegistry | None = None,
    ) -> None:
        self._client = client
        self.sources = list(sources)
        self._tenants = tenants if tenants is not None else TenantRegistry()
        self.last: dict[tuple[str, str], Scrape] = {}

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
            asyncio.create_task(scrape(self._client, s, min(s.timeout_seconds, cap), started))
            for s in sources
        ]
        if tasks:  # what is not done when the next tick is due is abandoned
            await asyncio.wait(tasks, timeout=interval)
        results = [_result(task, source, interval, started) for task, source in
                   zip(tasks, sources, strict=True)]  # fmt: skip
        for result in results:
            self.last[(tenant_id, result.source.name)] = result
        return tick_rows(tenant_id, results)
