"""REST history routes under `/api/v1`, each in JSON, CSV, Arrow IPC or Parquet."""

from datetime import datetime, timedelta
from functools import partial
from typing import Annotated, Any, cast

import duckdb
import pyarrow as pa
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from query.formats import encode, negotiate
from query.history import HEAD, Expired, Refreshing, increase_snapshot
from query.sql import latest_sql, series_sql, series_where, where
from schemas.db import Database, arrow
from schemas.http import error_response
from schemas.models import IncreaseParams, LatestParams, SampleFilters, SeriesParams
from schemas.nested import json_number
from schemas.times import rfc3339, utcnow

DEFAULT_WINDOW = timedelta(hours=24)
MAX_BUCKETS = 10_000

router = APIRouter(prefix="/api/v1")


CURSOR_HEADER = "X-Omnimetrics-Cursor"
# Set on a `latest` answer cut at its `limit` (CSV, Arrow and Parquet have no room to say).
TRUNCATED_HEADER = "X-Omnimetrics-Truncated"


async def _table(request: Request, sql: str, args: dict[str, Any]) -> pa.Table:
    def run(cur: duckdb.DuckDBPyConnection) -> pa.Table:
        return arrow(cur, sql, args)

    return await cast(Database, request.state.db).read(run)


async def _snapshot(request: Request, sql: str, args: dict[str, Any]) -> tuple[pa.Table, int]:
    """The answer and the last seq of the snapshot it was read from."""

    def run(cur: duckdb.DuckDBPyConnection) -> tuple[pa.Table, int]:
        cur.begin()
        try:
            table = arrow(cur, sql, args)
            (head,) = cur.execute(HEAD).fetchall()[0]
            return table, int(head)
        finally:
            cur.commit()

    return await cast(Database, request.state.db).read(run)


def _with_cursor(response: Response, request: Request, head: int) -> Response:
    """Where a stream resumed from extends this answer exactly (`since=` that cursor)."""
    response.headers[CURSOR_HEADER] = f"{cast(Database, request.state.db).epoch}:{head}"
    return response


def _format(request: Request, params: SampleFilters) -> str:
    return negotiate(params.format, request.headers.get("accept"))


def _window(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    end = end or utcnow()
    return start or end - DEFAULT_WINDOW, end


@router.get("/series")
async def series(request: Request, params: Annotated[SeriesParams, Query()]) -> Response:
    """Raw samples in `seq` order; `from` inclusive, `to` exclusive, default the last 24 h."""
    start, end = _window(params.from_, params.to)
    if start >= end:
        return error_response(422, "`from` must be before `to`")
    cond, args = where(params, start, end)
    args["limit"] = params.limit
    table = await _table(request, series_sql(cond), args)
    return encode(table, _format(request, params), lambda rows: {"samples": rows}, "series")


@router.get("/latest")
async def latest(request: Request, params: Annotated[LatestParams, Query()]) -> Response:
    """The latest sample of every series that matches the filters."""
    cond, args = series_where(params)
    args["limit"] = params.limit
    table, head = await _snapshot(request, latest_sql(cond), args)
    truncated = table.num_rows > params.limit
    table = table.slice(0, params.limit)

    def as_json(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {"series": rows, "truncated": True} if truncated else {"series": rows}

    response = encode(table, _format(request, params), as_json, "latest")
    if truncated:
        response.headers[TRUNCATED_HEADER] = "true"
    return _with_cursor(response, request, head)


@router.get("/increase")
async def increase(request: Request, params: Annotated[IncreaseParams, Query()]) -> Response:
    """Reset-aware increase of `metric` per `step` bucket (gap-filled with 0), per group."""
    start, end = _window(params.from_, params.to)
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
    db = cast(Database, request.state.db)
    try:
        table, head = await db.read(partial(increase_snapshot, filters=params, labels=labels,
                                            start=start, end=end, step=step))  # fmt: skip
    except Expired as exc:
        return error_response(422, str(exc))
    except Refreshing as exc:
        return error_response(503, str(exc), None, **{"Retry-After": "60"})

    def as_json(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "metric": params.metric,
            "step": params.step,
            "from": rfc3339(start),
            "to": rfc3339(end),
            "buckets": rows,
            "total": json_number(sum(table.column("value").to_pylist())),
        }

    response = encode(table, _format(request, params), as_json, "increase")
    return _with_cursor(response, request, head)
