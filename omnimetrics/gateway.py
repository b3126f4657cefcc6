"""`create_gateway(settings)`: a stream gateway (CONTRACT.md "Gateways"). It serves
`/ws/metrics`, `/stream/metrics` and `/health` as `serve` does, from the writer's Redis
Stream: a `RedisReader` hands each batch to the local hub (and keeps the latest for
clients that resume), a `WriterWatch` keeps the tenants' settings in force, and resuming
clients whose cursors reach back further are caught up from the writer's
`/api/v1/batches`. No database, no collection: the writer does those.
"""

import contextlib
import gc
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any, cast

import httpx
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError

from omnimetrics.app import App, Drain, background, stream_hub
from omnimetrics.health import failing, streams_report
from omnimetrics.metrics import Metrics
from omnimetrics.settings import Settings
from schemas.auth import issue
from schemas.http import JSONResponse, validation_error_response
from schemas.models import NoParams
from schemas.outcomes import Outcome
from schemas.tenants import TenantRegistry, TenantSettings
from schemas.times import rfc3339, utcnow
from stream.batches import Batch
from stream.hub import Hub
from stream.redis_stream import (
    GatewayStart,
    RedisReader,
    WriterWatch,
    gateway_start,
    writer_fill,
)
from stream.replay import ReplayGate
from stream.routes import router as stream_router
from stream.sources import Recent, RemoteSource

WRITER_TIMEOUT_SECONDS = 10.0
CREDENTIAL_SECONDS = 300  # how long each credential minted for the writer is valid


class GatewayCredential(httpx.Auth):
    """A `gateway` credential for each request to the writer, minted from the shared
    secret (SECURITY.md), short-lived so a logged header is soon worthless."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def auth_flow(self, request: httpx.Request) -> Any:
        token = issue(self._secret, "gateways", ["gateway"], int(time.time()) + CREDENTIAL_SECONDS)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


def _follow(hub: Hub, tenant_id: str, settings: TenantSettings) -> None:
    hub.settings_changed(tenant_id)


def create_gateway(settings: Settings, start: GatewayStart | None = None) -> App:
    """The gateway's app, from `start` (read just before) or, in its lifespan, from what
    Redis holds then (waiting up to `gateway_start_seconds` for a writer that has
    published); the lifespan opens every resource."""
    if settings.redis_url is None or settings.writer_url is None:
        raise ValueError("a gateway needs redis_url and writer_url")
    redis_url, writer_url = settings.redis_url, settings.writer_url
    drain = Drain()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
            http = httpx.AsyncClient(
                base_url=writer_url,
                timeout=WRITER_TIMEOUT_SECONDS,
                auth=GatewayCredential(secret) if secret is not None else None,
            )
            await stack.enter_async_context(http)
            begun = start or await gateway_start(redis_url, settings.redis_prefix,
                                                 settings.gateway_start_seconds)  # fmt: skip
            tenants = TenantRegistry(begun.tenants)
            hub = stream_hub(settings, begun.epoch, begun.position, tenants, metrics)
            stack.callback(hub.close)
            stack.callback(tenants.subscribe(partial(_follow, hub)))
            replay = ReplayGate(settings.max_replay_reads, settings.max_replaying_clients)
            fill = writer_fill(http, begun.epoch)
            recent = Recent(begun.position)
            source = RemoteSource(fill, replay, recent)

            def deliver(batches: Sequence[Batch], upto: int) -> None:
                # `commit_to_sent_ms` counts from here: the commit's clock is the writer's.
                hub.dispatch(batches, upto, time.perf_counter())
                recent.add(batches, upto)

            reader = RedisReader(redis_url, begun.position, deliver, fill, settings.redis_prefix)
            watch = WriterWatch(redis_url, begun.epoch, tenants, settings.redis_prefix)
            await stack.enter_async_context(background(watch.run(), "omnimetrics-watch"))
            await stack.enter_async_context(background(reader.run(), "omnimetrics-read"))
            drain.hub = hub
            gc.freeze()  # as in serve: what lives as long as the process, out of the GC's way
            stack.callback(gc.unfreeze)
            yield {"hub": hub, "replay": replay, "source": source, "reader": reader,
                   "watch": watch, "tenants": tenants, "metrics": metrics}  # fmt: skip

    app = FastAPI(title="omnimetrics gateway", version="0.1.0", lifespan=lifespan,
                  default_response_class=JSONResponse)  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(exc.errors())

    app.include_router(router)
    app.include_router(stream_router)
    app.state.drain = drain
    return App(app, settings, metrics)


router = APIRouter()


@router.get("/health")
async def health(request: Request, params: Annotated[NoParams, Query()]) -> JSONResponse:
    """200 while the gateway serves; `degraded`, with `reasons`, while it cannot read the
    Redis stream, the writer is not heard from, or catching clients up from it fails."""
    hub = cast(Hub, request.state.hub)
    reader = cast(RedisReader, request.state.reader)
    watch = cast(WriterWatch, request.state.watch)
    replay = cast(ReplayGate, request.state.replay)
    source = cast(RemoteSource, request.state.source)
    outcomes: dict[str, Outcome] = {"read": reader.outcome, "watch": watch.outcome,
                                    "catch_up": source.outcome}  # fmt: skip
    reasons = [failing(o) for o in outcomes.values() if o.error is not None]
    reasons += watch.reasons()
    return JSONResponse({
        "status": "degraded" if reasons else "healthy",
        "reasons": reasons,
        "role": "gateway",
        "gateway": {
            "pid": os.getpid(),  # which worker answered (`--workers`)
            "position": reader.position,
            "redis_connected": reader.connected,
            "writer_heard": watch.writer_heard,
            "writer_head_seq": watch.writer_head,
            "filled_from_writer": reader.filled,  # batches the stream lacked
            "catch_up_fetches": source.fetches,  # pages fetched for resuming clients
            "recent_from_seq": source.recent.start,  # resumes after it need no fetch
        },
        "streams": streams_report(hub, replay),
        "jobs": {name: outcome.report() for name, outcome in outcomes.items()},
        "time": rfc3339(utcnow()),
    })  # fmt: skip
