"""`GET /health`: what every stage says about itself, composed here."""

import statistics
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query, Request

from ingest.collector import Collector
from ingest.jobs import CollectionJobs
from ingest.writer import Writer
from schemas.http import JSONResponse
from schemas.models import NoParams
from schemas.outcomes import Outcome
from schemas.times import rfc3339, utcnow
from stream.hub import Hub
from stream.redis_stream import RedisPublisher
from stream.replay import ReplayGate

router = APIRouter()


@router.get("/health")
async def health(request: Request, params: Annotated[NoParams, Query()]) -> JSONResponse:
    """200 while the process serves; `degraded`, with `reasons`, while a source is down,
    the latest write, tick, export or rollup refresh failed, or a tick was skipped lately."""
    writer = cast(Writer, request.state.writer)
    collector = cast(Collector, request.state.collector)
    hub = cast(Hub, request.state.hub)
    jobs = cast(CollectionJobs, request.state.jobs)
    replay = cast(ReplayGate, request.state.replay)
    outcomes = cast(dict[str, Outcome], request.state.outcomes)
    publisher = cast(RedisPublisher | None, request.state.publisher)
    sources: dict[str, dict[str, Any]] = {}
    down: list[str] = []
    for source in collector.sources:
        last = collector.last.get((source.tenant_id, source.name))
        key = source.name if source.tenant_id == "local" else f"{source.tenant_id}/{source.name}"
        if last is None:
            sources[key] = {"status": "pending", "url": source.url}
            continue
        if not last.up:
            down.append(f"source {key!r} is down: {last.error}")
        sources[key] = {
            "status": "healthy" if last.up else "down",
            "url": source.url,
            "error": last.error,
            "duration_seconds": round(last.duration_seconds, 6),  # the target's time
            "parse_seconds": round(last.parse_seconds, 6),
            "queue_seconds": round(last.queue_seconds, 6),
        }
    skipped = jobs.skipped_recently()
    reasons = [f"tenant {t!r}: collection ticks skipped in the last minute ({n} since the "
               "start)" for t, n in skipped.items()]  # fmt: skip
    if writer.last_error is not None:
        reasons.append(f"the latest write failed: {writer.last_error}")
    reasons += [failing(c.outcome) for c in jobs.counts.values() if c.outcome.error]
    reasons += [failing(o) for o in outcomes.values() if o.error is not None]
    reasons += down
    return JSONResponse(
        {
            "status": "degraded" if reasons else "healthy",
            "reasons": reasons,
            "sources": sources,
            "collection": {
                t: {
                    "ticks_run": c.run,
                    "ticks_skipped": c.skipped,
                    "ticks_failed": c.outcome.failures,
                    "error": c.outcome.error,
                    "tick_seconds": _quantiles(c.seconds),  # scrapes, parse and the write
                    "collect_seconds": _quantiles(c.collect_seconds),  # scrapes and parse
                }
                for t, c in jobs.counts.items()
            },
            "writer": {
                "last_seq": writer.last_seq,
                "error": writer.last_error,
                "errors": writer.errors,
                "transactions": writer.transactions,
                "series": len(writer.series),
                "series_limit_skipped": writer.series_skipped,
            },
            "streams": streams_report(hub, replay),
            "jobs": {name: outcome.report() for name, outcome in outcomes.items()},
            "publisher": publisher.report() if publisher is not None else None,
            "retention": _retention(writer),
            "time": rfc3339(utcnow()),
        }
    )


def streams_report(hub: Hub, replay: ReplayGate) -> dict[str, Any]:
    """The streams' part of `/health` (a gateway's too)."""
    return {
        "clients": len(hub),
        "queued_bytes": hub.queued_bytes(),
        "fanout_ms": p50_max(hub.fanout_ms),
        "commit_to_sent_ms": p50_max(hub.commit_to_sent_ms),
        "catching_up": replay.replaying,
        "catch_up_reads": replay.reading,
        "catch_up_pages": replay.pages,  # read from the database (a gateway: the writer)
        "catch_up_pages_served": replay.served,  # to clients, shared or not
        "catch_up_kept_bytes": replay.shared.kept_bytes,  # pages kept for others
        "catch_up_refused": replay.refused,
    }


def _retention(writer: Writer) -> dict[str, Any]:
    """From when raw samples, 1 m and 1 h/1 d rollups are kept (null: from the start), and
    what the latest run deleted."""
    cut, done = writer.cutoffs, writer.retained

    def at(seconds: int) -> str | None:
        return rfc3339(datetime.fromtimestamp(seconds, UTC)) if seconds else None

    return {
        "raw_from": at(cut.raw),
        "minute_rollups_from": at(cut.minutes),
        "rollups_from": at(cut.rollups),
        "tenants_raw_from": {t: at(s) for t, s in cut.tenants.items()},
        "deleted_points": done.points if done is not None else 0,
        "deleted_rollup_rows": done.rollups if done is not None else 0,
    }


def failing(outcome: Outcome) -> str:
    since = rfc3339(outcome.failing_since) if outcome.failing_since else "?"
    return f"{outcome.what} fails (since {since}): {outcome.error}"


def _quantiles(values: Collection[float]) -> dict[str, float] | None:
    """p50, p99 and max of the last 60 ticks, or None before the first."""
    if not values:
        return None
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"p50": round(statistics.median(ordered), 4), "p99": round(p99, 4),
            "max": round(ordered[-1], 4)}  # fmt: skip


def p50_max(values: Collection[float]) -> dict[str, float] | None:
    """Median and maximum of the recent batches, or None before the first."""
    if not values:
        return None
    return {"p50": round(statistics.median(values), 3), "max": round(max(values), 3)}
