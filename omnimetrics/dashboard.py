"""`GET /`: the live dashboard, and `/static/*`: its files and the reusable stream client
(`/static/omnimetrics.js`). Plain HTML, CSS and JavaScript modules: no build step, no
CDN, works offline."""

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import StringConstraints
from starlette.responses import FileResponse
from starlette.staticfiles import StaticFiles

from schemas.models import Strict

Text = Annotated[str, StringConstraints(max_length=200)]


class DashboardParams(Strict):
    """The page keeps its filters in its address (it reads them itself)."""

    tenant_id: Text | None = None
    tool_id: Text | None = None
    session_id: Text | None = None


STATIC = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)
static_files = StaticFiles(directory=STATIC)


@router.get("/")
async def dashboard(params: Annotated[DashboardParams, Query()]) -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
