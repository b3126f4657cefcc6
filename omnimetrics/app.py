"""`create_app(settings)`: the one place where the stages are wired together."""

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.middleware.cors import CORSMiddleware

from ingest.collector import Collector, http_client
from ingest.jobs import CollectionJobs
from ingest.limits import EventBudget
from ingest.routes import push_app, write_failed_response
from ingest.routes import router as ingest_router
from ingest.writer import WriteFailed, Writer
from omnimetrics.dashboard import router as dashboard_router
from omnimetrics.dashboard import static_files
from omnimetrics.guard import Guard
from omnimetrics.health import router as health_router
from omnimetrics.metrics import Metrics, StageMetrics, Stages
from omnimetrics.metrics import router as metrics_router
from omnimetrics.settings import Config, Settings, load_config, sources_for, with_demo_tenants
from omnimetrics.tenant_settings import router as settings_router
from query.legacy_routes import router as legacy_router
from query.mirror import export_new, keep_mirror, mirror_dir
from query.routes import CURSOR_HEADER
from query.routes import router as query_router
from schemas.db import Database
from schemas.http import JSONResponse, validation_error_response
from schemas.outcomes import Outcome
from schemas.retention import Policy
from schemas.signals import AppendSignal, Listener
from schemas.tenants import (
    TenantRegistry,
    TenantSettings,
    collection_interval,
    load_tenant_settings,
)
from schemas.times import utcnow
from stream.hub import Hub, StreamLimits
from stream.redis_stream import RedisPublisher
from stream.replay import ReplayGate
from stream.routes import batches_router
from stream.routes import router as stream_router
from stream.sources import StoreSource
from stream.tail import Tail
from stream.ws import PATH as WS_PATH
from stream.ws import ws_metrics

DRAIN_SECONDS = 3.0


class Drain:
    """Ends every open stream before the server closes connections, so WS clients get
    1001 and SSE streams finish cleanly; the server calls it first thing on shutdown."""

    def __init__(self) -> None:
        self.hub: Hub | None = None

    async def __call__(self) -> None:
        if self.hub is None:
            return
        self.hub.close()
        with anyio.move_on_after(DRAIN_SECONDS):
            await self.hub.wait_empty()


class App:
    """The ASGI app: `WS /ws/metrics` goes straight to its bare endpoint, everything else
    (lifespan included) to FastAPI. A WebSocket is held for hours, and the framework's
    middleware would stay suspended on its stack all that time (stream/ws.py)."""

    def __init__(self, api: FastAPI, settings: Settings, metrics: Metrics) -> None:
        self.api = api
        self.state = api.state
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        regex = settings.origin_regex()
        self.guard = Guard(api, secret=secret, allowed_origins=settings.origins(),
                           max_body_bytes=settings.max_body_bytes,
                           origin_regex=regex, metrics_public=settings.metrics_public,
                           push=push_app)  # fmt: skip
        self.http: Any = metrics.count_pushes(self.guard)
        origins = settings.origins()
        if origins or regex:  # without any, browsers keep to the same origin (no CORS headers)
            self.http = CORSMiddleware(
                self.http,
                allow_origins=origins,
                allow_origin_regex=regex,
                allow_credentials="*" not in origins,  # never "*" with credentials
                allow_methods=["GET", "PUT", "POST"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                expose_headers=[CURSOR_HEADER],
                max_age=600,
            )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            checked = await self.guard.websocket(scope, receive, send)
            if checked is None:
                return
            if checked["path"] == WS_PATH:
                await ws_metrics(dict(checked), receive, send)
                return
            await self.api(checked, receive, send)
        elif scope["type"] == "http":
            await self.http(scope, receive, send)
        else:
            await self.api(scope, receive, send)


async def _seed_tenants(db: Database, writer: Writer, config: Config) -> dict[str, TenantSettings]:
    """Settings in force per tenant; the config file seeds those never set, later changes win."""
    tenants = await db.read(load_tenant_settings)
    for tenant_id, update in config.tenants.items():
        if tenant_id not in tenants:
            initial = update.apply(TenantSettings())
            await writer.put_tenant_settings(tenant_id, initial.model_dump_json())
            tenants[tenant_id] = initial
    return tenants


def _follow_settings(
    jobs: CollectionJobs, hub: Hub, tenant_id: str, settings: TenantSettings
) -> None:
    """New settings in force: the tenant's job runs at its interval from now on (or stops),
    and its streams end or re-pace, all before the next tick."""
    if tenant_id in jobs.tenants():
        jobs.schedule(tenant_id, collection_interval(settings))
    hub.settings_changed(tenant_id)


async def _final_export(db: Database, outcome: Outcome) -> None:
    """A last export on shutdown, so the notebooks' mirror holds everything committed
    (if it fails, the log says why in a line; the next start exports it)."""
    try:
        await db.read(partial(export_new, mirror=mirror_dir(db.path), epoch=db.epoch))
    except Exception as exc:
        outcome.failed(exc)


async def _keep_rollups(writer: Writer, interval: float, outcome: Outcome) -> None:
    """Materialize closed hours through the writer every `interval` seconds."""
    while True:
        try:
            await writer.refresh_rollups(utcnow())
        except Exception as exc:
            outcome.failed(exc)
        else:
            outcome.succeeded()
        await asyncio.sleep(interval)


def retention_policy(settings: Settings, tenants: TenantRegistry) -> Policy:
    """The service's windows, and each tenant's own raw window where it is shorter."""
    own = {t: timedelta(days=d) for t, d in tenants.retention_days().items()}
    return Policy(settings.retention_raw, settings.retention_minute, settings.retention_rollup,
                  {t: w for t, w in own.items() if w < settings.retention_raw})  # fmt: skip


async def _keep_retention(
    writer: Writer, settings: Settings, tenants: TenantRegistry, outcome: Outcome
) -> None:
    """Delete what retention no longer keeps, through the writer: now, then every
    `retention_interval`, and at once when a tenant's `retention_days` changes (settings
    are in force at once)."""
    changed = asyncio.Event()
    policy = retention_policy(settings, tenants)

    def follow(tenant_id: str, new: TenantSettings) -> None:
        if retention_policy(settings, tenants) != policy:
            changed.set()

    unsubscribe = tenants.subscribe(follow)
    try:
        while True:
            changed.clear()
            policy = retention_policy(settings, tenants)
            try:
                await writer.retain(policy, utcnow())
            except Exception as exc:
                outcome.failed(exc)
            else:
                outcome.succeeded()
            # asyncio.timeout, not wait_for: on 3.11 wait_for wraps the wait in a task of its own
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.retention_interval.total_seconds()):
                    await changed.wait()
    finally:
        unsubscribe()


def stream_hub(
    settings: Settings, epoch: str, position: int, tenants: TenantRegistry, metrics: Metrics
) -> Hub:
    """The streams' hub, with the settings' budget, keepalive and limits (serve's and a
    gateway's alike), paced by the tenants' settings."""
    limits = StreamLimits(settings.max_streams, settings.max_streams_per_tenant,
                          settings.new_streams_per_second)  # fmt: skip
    return Hub(epoch, position, budget=settings.stream_queue_bytes,
               keepalive_seconds=settings.sse_keepalive_seconds, policy=tenants.policy,
               limits=limits, observe_delivery=metrics.observe_delivery)  # fmt: skip


@asynccontextmanager
async def background(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """Run `work` as a task for the life of the block; cancel and await it on exit."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def create_app(
    settings: Settings, config: Config | None = None, commit_listeners: Sequence[Listener] = ()
) -> App:
    """The app; its lifespan opens every resource and closes them in reverse.
    `commit_listeners` also hear the writer's commit notices (after the stream's tail; an
    embedding program's or a benchmark's clock), under the signal's rule: never block."""
    config = with_demo_tenants(
        settings, config if config is not None else load_config(settings.config)
    )
    sources = sources_for(settings, config)
    drain = Drain()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # Each resource registers its cleanup as it opens; they close in reverse.
        async with contextlib.AsyncExitStack() as stack:
            db = Database(settings.db, memory_limit=settings.memory_limit, threads=settings.threads)
            stack.callback(db.close)
            signal = AppendSignal()
            writer = Writer(db, signal, settings.max_series_per_tenant,
                            observe_commit=metrics.commit_seconds.observe)  # fmt: skip
            stack.push_async_callback(writer.close)
            await writer.start()
            tenants = TenantRegistry(await _seed_tenants(db, writer, config))
            hub = stream_hub(settings, db.epoch, writer.last_seq, tenants, metrics)
            stack.callback(hub.close)
            publisher = None
            if settings.redis_url is not None:
                publisher = RedisPublisher(
                    settings.redis_url,
                    db,
                    hub.epoch,
                    hub.position,
                    settings.redis_prefix,
                    settings.redis_maxlen,
                    tenants=tenants,
                )
                publishing = background(publisher.run(), "omnimetrics-publish")
                await stack.enter_async_context(publishing)
            tail = Tail(db, hub, publisher.offer if publisher is not None else None)
            stack.callback(signal.subscribe(tail.notify))
            for listener in commit_listeners:
                stack.callback(signal.subscribe(listener))
            await stack.enter_async_context(background(tail.run(), "omnimetrics-tail"))
            outcomes = {"export": Outcome(f"the export to {mirror_dir(db.path)}"),
                        "rollups": Outcome("the rollups' refresh"),
                        "retention": Outcome("the retention run")}  # fmt: skip
            if publisher is not None:
                outcomes["publish"] = publisher.outcome
            stack.push_async_callback(_final_export, db, outcomes["export"])
            mirror = keep_mirror(db, settings.export_interval_seconds, outcomes["export"])
            await stack.enter_async_context(background(mirror, "omnimetrics-mirror"))
            rollups = _keep_rollups(writer, settings.rollup_interval_seconds, outcomes["rollups"])
            await stack.enter_async_context(background(rollups, "omnimetrics-rollups"))
            retain = _keep_retention(writer, settings, tenants, outcomes["retention"])
            await stack.enter_async_context(background(retain, "omnimetrics-retention"))
            drain.hub = hub
            client = await stack.enter_async_context(http_client(len(sources)))
            collector = Collector(client, sources, tenants, metrics.observe_scrape)
            intervals = {t: collection_interval(tenants.get(t)) for t in collector.tenants()}
            jobs = CollectionJobs(collector, writer, intervals)
            jobs.start()
            stack.push_async_callback(jobs.stop)
            stack.callback(tenants.subscribe(partial(_follow_settings, jobs, hub)))
            budget = EventBudget(settings.max_events_per_request,
                                 settings.max_ingest_events_per_minute)  # fmt: skip
            # What was built by now (modules, the app, these resources) lives as long as
            # the process: out of the collector's sight, so a full collection no longer
            # walks it and stalls the event loop for tens of milliseconds.
            gc.freeze()
            stack.callback(gc.unfreeze)
            replay = ReplayGate(settings.max_replay_reads, settings.max_replaying_clients)
            stages = StageMetrics(Stages(collector, jobs, writer, hub, replay, outcomes,
                                         str(db.path), publisher))  # fmt: skip
            metrics.registry.register(stages)
            stack.callback(metrics.registry.unregister, stages)
            yield {"db": db, "writer": writer, "collector": collector, "signal": signal,
                   "jobs": jobs, "hub": hub, "tenants": tenants, "ingest_budget": budget,
                   "max_body_bytes": settings.max_body_bytes, "replay": replay,
                   "outcomes": outcomes, "metrics": metrics, "publisher": publisher,
                   "source": StoreSource(db, replay, hub.epoch)}  # fmt: skip

    app = FastAPI(
        title="omnimetrics",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(exc.errors())

    @app.exception_handler(WriteFailed)
    async def _not_written(request: Request, exc: WriteFailed) -> Response:
        return write_failed_response(exc)

    app.include_router(health_router)
    app.include_router(metrics_router)
    app.include_router(ingest_router)
    app.include_router(query_router)
    app.include_router(legacy_router)
    app.include_router(stream_router)
    app.include_router(batches_router)
    app.include_router(settings_router)
    app.include_router(dashboard_router)
    app.mount("/static", static_files, name="static")
    app.state.drain = drain
    return App(app, settings, metrics)
