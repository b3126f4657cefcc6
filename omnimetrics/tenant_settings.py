"""The settings routes, with the old service's paths and fields: `GET/PUT /settings`,
`POST /settings/reset`, `GET /settings/profiles`.

A change is appended to `tenant_settings` through the writer, then put in force in the
registry, whose listeners reschedule the tenant's collection and end or re-pace its
streams at once: no restart.
"""

from datetime import datetime
from functools import partial
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query, Request

from ingest.writer import Writer
from schemas.db import Database
from schemas.http import JSONResponse
from schemas.models import NoParams, TenantParams
from schemas.tenants import (
    SettingsUpdate,
    TenantRegistry,
    TenantSettings,
    profiles_document,
    settings_times,
)
from schemas.times import rfc3339

router = APIRouter(tags=["settings"])


def _registry(request: Request) -> TenantRegistry:
    return cast(TenantRegistry, request.state.tenants)


def _time(ts: datetime | None) -> str | None:
    return rfc3339(ts) if ts is not None else None


async def _put(request: Request, tenant_id: str, settings: TenantSettings) -> None:
    await cast(Writer, request.state.writer).put_tenant_settings(
        tenant_id, settings.model_dump_json()
    )
    _registry(request).set(tenant_id, settings)


def _changed(tenant_id: str, settings: TenantSettings, message: str) -> dict[str, Any]:
    return {"status": "success", "message": message, "settings": settings.model_dump(),
            "tenant_id": tenant_id}  # fmt: skip


@router.get("/settings")
async def get_settings(request: Request, params: Annotated[TenantParams, Query()]) -> JSONResponse:
    """The tenant's settings in force (the defaults for a tenant never set: nothing is
    created by reading)."""
    db = cast(Database, request.state.db)
    created, updated = await db.read(partial(settings_times, tenant_id=params.tenant_id))
    return JSONResponse(
        {
            "tenant_id": params.tenant_id,
            "settings": _registry(request).get(params.tenant_id).model_dump(),
            "created_at": _time(created),
            "updated_at": _time(updated),
        }
    )


@router.put("/settings")
async def put_settings(
    request: Request, params: Annotated[TenantParams, Query()], body: SettingsUpdate
) -> JSONResponse:
    """Change the fields given (a `performance_profile` brings its preset first); in force
    before this answers."""
    registry = _registry(request)
    async with registry.changing:
        settings = body.apply(registry.get(params.tenant_id))
        await _put(request, params.tenant_id, settings)
    return JSONResponse(_changed(params.tenant_id, settings, "Settings updated successfully"))


@router.post("/settings/reset")
async def reset_settings(
    request: Request, params: Annotated[TenantParams, Query()]
) -> JSONResponse:
    """Back to the defaults (recorded as a change, like any other)."""
    async with _registry(request).changing:
        settings = TenantSettings()
        await _put(request, params.tenant_id, settings)
    return JSONResponse(_changed(params.tenant_id, settings, "Settings reset to defaults"))


@router.get("/settings/profiles")
async def get_profiles(params: Annotated[NoParams, Query()]) -> JSONResponse:
    """The performance profiles, each with its description and the fields it sets."""
    return JSONResponse({"profiles": profiles_document()})
