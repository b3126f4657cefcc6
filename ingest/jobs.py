"""APScheduler jobs: one per tenant, at the tenant's interval.

Collection happens here and only here, once per tick, however many clients watch.

A tick either runs or is counted as skipped, never skipped silently. Every run time is
handed to us (`coalesce=False`); one that could not start within half an interval of its
time (at least 1 s: APScheduler counts whole seconds) is *missed*, and one due while two
ticks of the tenant are still running is *skipped at capacity*. Both are counted per
tenant, logged at most once a minute with how many, and make `/health` degraded for a
minute after. Up to two
ticks of a tenant may overlap, so a slow write never delays the next tick's scrapes; a
tick's sources that have not answered when the next tick is due are abandoned (their
scrape fails with that reason) and the tick writes what it has.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from ingest.collector import Collector
from ingest.writer import Commit, Writer
from schemas.outcomes import Outcome
from schemas.times import utcnow

log = logging.getLogger("omnimetrics.ingest")

SHUTDOWN_GRACE_SECONDS = 5.0
OVERLAPPING_TICKS = 2  # a tick still writing when the next is due does not hold it back
SKIPPED_RECENTLY_SECONDS = 60.0  # `/health` is degraded this long after a skipped tick
RECENT_TICKS = 60  # whose durations `/health` summarizes
_JOB_PREFIX = "collect:"


@dataclass
class TickCounts:
    """How one tenant's ticks went since the start."""

    outcome: Outcome  # whether the latest tick ran to its commit
    run: int = 0
    skipped: int = 0
    last_skipped_at: float | None = None  # time.monotonic()
    logged_at: float = field(default=-1e9)  # the last "skipped" log line
    unlogged: int = 0  # skips since that line
    seconds: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_TICKS))
    collect_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_TICKS))

    def skipped_recently(self, now: float) -> bool:
        return self.last_skipped_at is not None and (
            now - self.last_skipped_at < SKIPPED_RECENTLY_SECONDS
        )


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
        self.counts: dict[str, TickCounts] = {}

    def tenants(self) -> list[str]:
        """The tenants that have sources to collect."""
        return self._collector.tenants()

    def interval(self, tenant_id: str) -> float | None:
        return self._intervals.get(tenant_id, 1.0)

    def skipped_recently(self) -> dict[str, int]:
        """Tenants with a tick skipped in the last minute, and how many since the start."""
        now = time.monotonic()
        return {t: c.skipped for t, c in self.counts.items() if c.skipped_recently(now)}

    async def tick(self, tenant_id: str) -> Commit | None:
        """Collect every source of the tenant once and write the batch."""
        interval = self.interval(tenant_id)
        if interval is None:
            return None
        counts = self._counts(tenant_id)
        counts.run += 1
        started = time.perf_counter()
        tick = await self._collector.collect(tenant_id, interval)
        counts.collect_seconds.append(time.perf_counter() - started)
        commit = await self._writer.append(tick.samples, tick.scrapes)
        counts.seconds.append(time.perf_counter() - started)
        if commit is not None and commit.skipped:
            log.warning("tenant %s: %d scraped samples of new series over the series "
                        "limit were not stored", tenant_id, commit.skipped)  # fmt: skip
        return commit

    async def _run_tick(self, tenant_id: str) -> None:
        """The job: the tick runs as a task of ours, so the scheduler's shutdown (which
        cancels what it runs) does not cut it off; `stop()` gives it its grace."""
        task = asyncio.create_task(self._guarded(tenant_id), name=f"tick:{tenant_id}")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            pass  # the scheduler stopped; the tick goes on under stop()'s grace

    def _counts(self, tenant_id: str) -> TickCounts:
        counts = self.counts.get(tenant_id)
        if counts is None:
            outcome = Outcome(f"the collection tick of tenant {tenant_id!r}")
            counts = self.counts[tenant_id] = TickCounts(outcome)
        return counts

    async def _guarded(self, tenant_id: str) -> None:
        outcome = self._counts(tenant_id).outcome
        try:
            await self.tick(tenant_id)
        except asyncio.CancelledError:
            # Shutdown, after the grace period: what was committed stays, the rest is
            # abandoned. Not an error, and not a traceback.
            log.info("collection tick for tenant %s abandoned at shutdown", tenant_id)
        except Exception as exc:  # a failed tick must not kill the job; health reports it
            outcome.failed(exc)
        else:
            outcome.succeeded()

    def _skipped(self, event: JobEvent) -> None:
        """APScheduler's word that a run time did not run: counted, never silent."""
        if not event.job_id.startswith(_JOB_PREFIX):
            return
        tenant_id = event.job_id.removeprefix(_JOB_PREFIX)
        times = getattr(event, "scheduled_run_times", None) or [None]
        counts = self._counts(tenant_id)
        now = time.monotonic()
        counts.skipped += len(times)
        counts.unlogged += len(times)
        counts.last_skipped_at = now
        if now - counts.logged_at >= SKIPPED_RECENTLY_SECONDS:
            why = "still running" if event.code == EVENT_JOB_MAX_INSTANCES else "started late"
            log.warning("tenant %s: %d collection ticks skipped in the last minute (the "
                        "latest: %s; interval %gs)", tenant_id, counts.unlogged, why,
                        self.interval(tenant_id) or 0)  # fmt: skip
            counts.logged_at, counts.unlogged = now, 0

    def start(self) -> None:
        # Our own accounting says what was skipped, once a minute; APScheduler's lines
        # would say it at every tick (and "Running job" at info for each one).
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        self._scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        self._scheduler.add_listener(self._skipped, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        for tenant_id in self._collector.tenants():
            self.schedule(tenant_id, self.interval(tenant_id))
        self._scheduler.start()

    def schedule(self, tenant_id: str, interval: float | None) -> None:
        """(Re)schedule a tenant's job at `interval` seconds; None removes it."""
        if self._scheduler is None:
            raise RuntimeError("jobs are not started")
        self._intervals[tenant_id] = interval
        job_id = f"{_JOB_PREFIX}{tenant_id}"
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
            max_instances=OVERLAPPING_TICKS,
            coalesce=False,  # every run time reaches us: run, or counted as missed
            misfire_grace_time=max(1, int(interval / 2)),  # APScheduler takes whole seconds
            next_run_time=utcnow(),  # the first tick runs now, not one interval later
        )

    async def stop(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=SHUTDOWN_GRACE_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
