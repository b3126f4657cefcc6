"""The old service's read routes, with its paths and field names (see query.legacy)."""

from datetime import datetime, timedelta
from functools import partial
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from query import legacy
from schemas.db import Database
from schemas.http import JSONResponse, error_response
from schemas.models import (
    Label,
    LegacyCompareParams,
    LegacyCurrentParams,
    LegacyHistoryParams,
    LegacySessionParams,
    LegacyTokenSavingsParams,
    LegacyToolHistoryParams,
    LegacyToolWindow,
    LegacyWindow,
    SampleFilters,
)
from schemas.nested import number
from schemas.times import rfc3339, utcnow

router = APIRouter(tags=["old service"])


def _db(request: Request) -> Database:
    return cast(Database, request.state.db)


def _window(hours: int) -> tuple[datetime, datetime]:
    end = utcnow()
    return end - timedelta(hours=hours), end


def _filters(
    params: LegacyWindow | LegacyCurrentParams | LegacySessionParams,
    tool_id: str | None = None,
    session_id: str | None = None,
) -> SampleFilters:
    return SampleFilters(tenant_id=params.tenant_id, tool_id=tool_id, session_id=session_id)


@router.get("/metrics/current")
async def current(request: Request, params: Annotated[LegacyCurrentParams, Query()]) -> Response:
    """Each source's latest stored values, nested as its upstream sent them, and status."""
    filters = _filters(params, tool_id=params.tool_id, session_id=params.session_id)
    body = await _db(request).read(partial(legacy.current, filters=filters, now=utcnow()))
    return JSONResponse(body)


@router.get("/metrics/history")
async def history(request: Request, params: Annotated[LegacyHistoryParams, Query()]) -> Response:
    """Snapshots of the last `hours` (the newest `limit`, oldest first)."""
    rows = await _history(request, params, params.tool_id)
    return JSONResponse({"history": rows, "count": len(rows), "hours": params.hours})


async def _history(
    request: Request, params: LegacyHistoryParams | LegacyToolHistoryParams, tool_id: str | None
) -> list[dict[str, Any]]:
    """The rows `/metrics/history` gives, for one tool or all."""
    start, end = _window(params.hours)
    filters = _filters(params, tool_id=tool_id)
    return await _db(request).read(
        partial(legacy.history, filters=filters, start=start, end=end, limit=params.limit)
    )


@router.get("/metrics/aggregates")
async def aggregates(request: Request, params: Annotated[LegacyToolWindow, Query()]) -> Response:
    """Totals (reset-aware) and averages over the last `hours`, optionally for one tool."""
    start, end = _window(params.hours)
    filters = _filters(params, tool_id=params.tool_id)
    groups = await _db(request).read(partial(legacy.grouped, filters=filters, start=start, end=end))
    s = groups.get(None) or legacy.empty_summary()
    return JSONResponse(
        {
            "total_tokens_saved": s["tokens_saved"],
            "total_embeddings": s["total_embeddings"],
            "total_compressions": s["total_compressions"],
            "avg_cache_hit_rate": s["avg_cache_hit_rate"],
            "avg_compression_ratio": s["avg_compression_ratio"],
            "total_sessions": s["total_sessions"],
            "active_sessions": s["active_sessions"],
        }
    )


@router.get("/metrics/token-savings")
async def token_savings(
    request: Request, params: Annotated[LegacyTokenSavingsParams, Query()]
) -> Response:
    """Tokens saved per hour (hours with savings), totals, rate and a monthly projection."""
    start, end = _window(params.hours)
    filters = _filters(params, tool_id=params.tool_id)
    hours = await _db(request).read(
        partial(legacy.hourly_savings, filters=filters, start=start, end=end)
    )
    total = sum(value for _, value in hours)
    rate = int(total / params.hours)
    return JSONResponse(
        {
            "time_series": [
                {"timestamp": rfc3339(t), "tokens_saved": number(v), "cost_saved": legacy.cost(v)}
                for t, v in hours
            ],
            "total_saved": number(total),
            "total_cost_saved": legacy.cost(total),
            "savings_rate": rate,
            "projected_monthly": rate * 24 * 30,
            "hours_analyzed": params.hours,
        }
    )


_BY_TOOL_FIELDS = ("tokens_saved", "total_compressions", "total_embeddings",
                   "avg_cache_hit_rate", "avg_compression_ratio", "active_sessions",
                   "sample_count")  # fmt: skip


@router.get("/metrics/by-tool")
async def by_tool(request: Request, params: Annotated[LegacyWindow, Query()]) -> Response:
    """Each tool with activity in the last `hours`, most tokens saved first, and totals."""
    start, end = _window(params.hours)
    groups = await _db(request).read(
        partial(legacy.grouped, filters=_filters(params), start=start, end=end, by="tool_id")
    )
    tools = [
        {"tool_id": tool_id, **{f: s[f] for f in _BY_TOOL_FIELDS}}
        for tool_id, s in groups.items()
        if tool_id is not None
        and (s["tokens_saved"] > 0 or s["total_compressions"] > 0 or s["total_embeddings"] > 0)
    ]
    tools.sort(key=lambda t: (-t["tokens_saved"], t["tool_id"]))
    total = {
        f: sum(t[f] for t in tools)
        for f in ("tokens_saved", "total_compressions", "total_embeddings", "active_sessions")
    }
    return JSONResponse({"hours": params.hours, "tools": tools, "total": total})


@router.get("/metrics/compare")
async def compare(request: Request, params: Annotated[LegacyCompareParams, Query()]) -> Response:
    """The same numbers side by side for the tools named (`tool_ids=a,b`)."""
    try:
        tool_ids = params.tools()
    except ValueError as exc:
        return error_response(422, str(exc))
    start, end = _window(params.hours)
    groups = await _db(request).read(
        partial(legacy.grouped, filters=_filters(params), start=start, end=end, by="tool_id")
    )
    empty = legacy.empty_summary()
    body: dict[str, Any] = {}
    for tool_id in tool_ids:
        s = groups.get(tool_id, empty)
        body[tool_id] = {
            "tokens_saved": s["tokens_saved"],
            "total_embeddings": s["total_embeddings"],
            "total_compressions": s["total_compressions"],
            "cache_hit_rate": s["avg_cache_hit_rate"],
            "compression_ratio": s["avg_compression_ratio"],
            "sample_count": s["sample_count"],
        }
    return JSONResponse(body)


@router.get("/metrics/latest")
async def latest(request: Request, params: Annotated[LegacySessionParams, Query()]) -> Response:
    """The latest stored values under the old field names (the old service asked its
    upstreams; these are what they last said)."""
    body = await _db(request).read(
        partial(legacy.latest_values, filters=_filters(params), now=utcnow())
    )
    return JSONResponse(body)


@router.get("/metrics/tool/{tool_id}")
async def tool(
    request: Request, tool_id: Label, params: Annotated[LegacyWindow, Query()]
) -> Response:
    """One tool's totals (reset-aware) and averages over the last `hours`."""
    start, end = _window(params.hours)
    metrics = await _db(request).read(partial(
        legacy.tool_metrics, filters=_filters(params, tool_id=tool_id), start=start, end=end
    ))  # fmt: skip
    return JSONResponse({"tool_id": tool_id, "hours": params.hours, "metrics": metrics})


@router.get("/metrics/tool/{tool_id}/history")
async def tool_history(
    request: Request, tool_id: Label, params: Annotated[LegacyToolHistoryParams, Query()]
) -> Response:
    """One tool's snapshots of the last `hours`, as `/metrics/history` gives them."""
    rows = await _history(request, params, tool_id)
    return JSONResponse({"tool_id": tool_id, "hours": params.hours, "history": rows,
                         "count": len(rows)})  # fmt: skip


@router.get("/sessions/{session_id}/metrics")
async def session_metrics(
    request: Request, session_id: Label, params: Annotated[LegacySessionParams, Query()]
) -> Response:
    """A session's totals over all its samples (zeros for a session never seen)."""
    filters = _filters(params, session_id=session_id)
    s = await _db(request).read(partial(legacy.session_summary, filters=filters, now=utcnow()))
    return JSONResponse(
        {
            "session_id": session_id,
            "total_embeddings": s["total_embeddings"],
            "total_compressions": s["total_compressions"],
            "tokens_saved": s["tokens_saved"],
            "avg_cache_hit_rate": s["avg_cache_hit_rate"],
            "avg_compression_ratio": s["avg_compression_ratio"],
            "sample_count": s["sample_count"],
        }
    )
