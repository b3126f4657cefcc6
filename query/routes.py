"""REST history routes under `/api/v1`."""

from datetime import timedelta
from typing import Annotated, Any, cast

import duckdb
from fastapi import APIRouter, Query, Request

from query.sql import increase_sql, latest_sql, series_sql, where
from schemas.db import Database
from schemas.http import JSONResponse, error_response
from schemas.models import IncreaseParams, LatestParams, SeriesParams
from schemas.times import rfc3339, utcnow

DEFAULT_WINDOW = timedelta(hours=24)
MAX_BUCKETS = 10_000

router = APIRouter(prefix="/api/v1")

_FIELDS = ("seq", "ts", "tenant_id", "tool_id", "session_id", "source", "metric", "kind", "value")


def _records(
    cur: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]
) -> list[dict[str, Any]]:
    rows = cur.execute(sql, params).fetchall()
    out = []
    for row in rows:
        record = dict(zip(_FIELDS, row, strict=True))
        record["ts"] = rfc3339(record["ts"])
        out.append(record)
    return out


@router.get("/series")
async def series(request: Request, params: Annotated[SeriesParams, Query()]) -> Any:
    """Raw samples in `seq` order; `from` inclusive, `to` exclusive, default the last 24 h."""
    end = params.to or utcnow()
    start = params.from_ or end - DEFAULT_WINDOW
    if start >= end:
        return error_response(422, "`from` must be before `to`")
    cond, args = where(params, start, end)
    args["limit"] = params.limit
    db = cast(Database, request.state.db)
    samples = await db.read(lambda cur: _records(cur, series_sql(cond), args))
    return JSONResponse({"samples": samples})


@router.get("/latest")
async def latest(request: Request, params: Annotated[LatestParams, Query()]) -> Any:
    """The latest sample of every series that matches the filters."""
    cond, args = where(params)
    db = cast(Database, request.state.db)
    rows = await db.read(lambda cur: _records(cur, latest_sql(cond), args))
    return JSONResponse({"series": rows})


@router.get("/increase")
async def increase(request: Request, params: Annotated[IncreaseParams, Query()]) -> Any:
    """Reset-aware increase of `metric` per `step` bucket (gap-filled with 0), per group."""
    end = params.to or utcnow()
    start = params.from_ or end - DEFAULT_WINDOW
    if start >= end:
        return error_response(422, "`from` must be before `to`")
    try:
        labels = params.group_labels()
    except ValueError as exc:
        return error_response(422, str(exc))
    step = params.step_seconds()
    first = int(start.timestamp()) // step
    last = -(-int(end.timestamp() * 1_000_000) // (step * 1_000_000)) - 1  # ceil, exclusive
    if last - first + 1 > MAX_BUCKETS:
        n = last - first + 1
        return error_response(422, f"{n} buckets of {params.step}: at most {MAX_BUCKETS}")
    cond, args = where(params)
    args.update(start=start, end=end, step=step, first=first, last=last)
    sql = increase_sql(cond, labels)

    def run(cur: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
        return cur.execute(sql, args).fetchall()

    rows = await request.state.db.read(run)
    buckets = []
    for row in rows:
        bucket: dict[str, Any] = {"t": rfc3339(row[0])}
        bucket.update(zip(labels, row[1:-1], strict=True))
        bucket["value"] = row[-1]
        buckets.append(bucket)
    return JSONResponse(
        {
            "metric": params.metric,
            "step": params.step,
            "from": rfc3339(start),
            "to": rfc3339(end),
            "buckets": buckets,
            "total": sum(b["value"] for b in buckets),
        }
    )
