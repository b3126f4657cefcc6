"""APScheduler jobs: one per tenant, at the tenant's interval, never overlapping.

Collection happens here and only here, once per tick, however many clients watch.
"""

import asyncio
import logging
from collections.abc import Mapping

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from ingest.collector import Collector
from ingest.writer import Commit, Writer
from schemas.times import utcnow

log = logging.getLogger("omnimetrics.ingest")

SHUTDOWN_GRACE_SECONDS = 5.0


class CollectionJobs:
    """Owns the scheduler and the ticks it runs; `stop()` waits for a tick in flight."""

    def __init__(
        self, collector: Collector, writer: Writer, intervals: Mapping[str, float | None]
    ) -> None:
        self._collector = collector
        self._writer = writer
        self._intervals = dict(intervals)
        self._scheduler: AsyncIOScheduler | None = None
        self._inflight: set[asyncio.Task[object]] = set()

    def tenants(self) -> list[str]:
        """The tenants that have sources to collect."""
        return self._collector.tenants()

    def interval(self, tenant_id: str) -> float | None:
        return self._intervals.get(tenant_id, 1.0)

    async def tick(self, tenant_id: str) -> Commit | None:
        """Collect every source of the tenant once and write the batch."""
        interval = self.interval(tenant_id)
        if interval is None:
            return None
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            tick = await self._collector.collect(tenant_id, interval)
            commit = await self._writer.append(tick.samples, tick.scrapes)
            if commit is not None and commit.skipped:
                log.warning("tenant %s: %d scraped samples of new series over the series "
                            "limit were not stored", tenant_id, commit.skipped)  # fmt: skip
            return commit
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _run_tick(self, tenant_id: str) -> None:
        try:
            await self.tick(tenant_id)
        except Exception:  # a failed tick must not kill the job; health reports it
            log.exception("collection tick for tenant %s failed", tenant_id)

    def start(self) -> None:
        self._scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        for tenant_id in self._collector.tenants():
            self.schedule(tenant_id, self.interval(tenant_id))
        self._scheduler.start()

    def schedule(self, tenant_id: str, interval: float | None) -> None:
        """(Re)schedule a tenant's job at `interval` seconds; None removes it."""
        if self._scheduler is None:
            raise RuntimeError("jobs are not started")
        self._intervals[tenant_id] = interval
        job_id = f"collect:{tenant_id}"
        if self._scheduler.get_job(job_id) is not None:
            self._scheduler.remove_job(job_id)
        if interval is None:
            return
        self._scheduler.add_job(
            self._run_tick,
            "interval",
            seconds=interval,
            args=[tenant_id],
            id=job_id,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(interval)),
            next_run_time=utcnow(),  # the first tick runs now, not one interval later
        )

    async def stop(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in pending:
                task.cancel()
