"""HTTP route of the ingest stage: `POST /ingest`.

It reads the writer from the lifespan state (`request.state`), which
the composition root fills.
"""

from collections import Counter
from dataclasses import replace
from typing import cast

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from ingest.bulk import Columns
from ingest.events import Event
from ingest.limits import EventBudget, OverLimit
from ingest.push import (
    BodyTooLarge,
    InvalidBody,
    columns_request,
    event_rows,
    parse_events,
    read_capped,
)
from ingest.writer import Expired, TooManySeries, WriteFailed, Writer
from schemas.auth import AuthError, Principal
from schemas.http import error_response, validation_error_response
from schemas.models import IngestAccepted, IngestBatch, IngestEvent, NoParams
from schemas.times import utcnow

router = APIRouter()
_JSON = {"content-type": "application/json"}

_INGEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        IngestEvent.model_json_schema(ref_template="#/components/schemas/{model}"),
                        IngestBatch.model_json_schema(ref_template="#/components/schemas/{model}"),
                    ]
                }
            }
        },
    }
}


@router.post(
    "/ingest",
    status_code=202,
    response_model=IngestAccepted,
    openapi_extra=_INGEST_BODY,
    responses={
        403: {"description": "an event names another tenant than the credential's"},
        413: {"description": "body over the limit (10 MiB by default)"},
        422: {
            "description": "invalid, too many events in one request, too many series, or a "
            "sample older than the tenant keeps raw samples (retention)"
        },
        429: {"description": "over the tenant's events per minute (see Retry-After)"},
        503: {"description": "the store could not write; nothing was stored (see Retry-After)"},
        507: {"description": "the disk is full; nothing was stored (see Retry-After)"},
    },
)
async def ingest(request: Request) -> Response:
    """Push samples. All or nothing; answered only once the events are committed."""
    # The hot path of small pushes: the request alone as a parameter, and the answer as
    # bytes, skip FastAPI's parameter and response models (a fifth of a small push's time).
    if request.scope["query_string"]:
        try:
            NoParams.model_validate(dict(request.query_params))
        except ValidationError as exc:
            return validation_error_response(
                [{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]
            )
    # The lifespan's state as the server hands it over (`request.state` wraps it anew).
    state = request.scope["state"]
    writer = cast(Writer, state["writer"])
    budget = cast(EventBudget, state["ingest_budget"])
    limit = cast(int, state["max_body_bytes"])
    try:
        body = await read_capped(request.stream(), request.headers.get("content-length"), limit)
        events = parse_events(body)
    except BodyTooLarge:
        return error_response(413, f"body is over the {limit}-byte limit")
    except InvalidBody as exc:
        return error_response(422, str(exc))
    except ValidationError as exc:
        return validation_error_response(exc.errors())
    if len(events) > budget.per_request:
        return error_response(
            422, f"events: {len(events)} in one request, at most {budget.per_request}"
        )
    principal = cast(Principal | None, state.get("principal"))
    if principal is not None:
        try:
            events = own_tenant(events, principal.tenant_id)
        except AuthError as exc:
            return error_response(exc.status, exc.reason)
    tenants = Counter(
        events.tenants if isinstance(events, Columns) else (e.tenant_id for e in events)
    )
    try:
        for tenant_id, n in tenants.items():
            budget.take(tenant_id, n)
    except OverLimit as exc:
        return error_response(429, exc.reason, None, **{"Retry-After": str(exc.retry_after)})
    now = utcnow()
    try:
        await writer.append_events(
            columns_request(events, now) if isinstance(events, Columns) else event_rows(events, now)
        )
    except (TooManySeries, Expired) as exc:
        return error_response(422, str(exc))
    accepted = IngestAccepted.model_construct(accepted=len(events), seq=writer.last_seq)
    return Response(orjson.dumps(accepted.__dict__), 202, _JSON)


async def push_app(scope: Scope, receive: Receive, send: Send) -> None:
    """`POST /ingest` as a bare ASGI app, for the composition root to route to directly:
    the route above without the framework's middleware and routing around it, which took
    over half of a small push's time on the event loop (py-spy, `python -m bench push`).
    The route stays declared on the router, for the API's description."""
    try:
        response = await ingest(Request(scope, receive))
    except WriteFailed as exc:
        response = write_failed_response(exc)
    except ClientDisconnect:
        return  # it left before its whole body came: nothing was stored, no one to answer
    await response(scope, receive, send)


DISK_FULL_RETRY_SECONDS = 30  # an operator has to free space
WRITE_FAILED_RETRY_SECONDS = 5


def write_failed_response(exc: WriteFailed) -> Response:
    """507 (disk full) or 503 with the store's reason and a Retry-After: the request's
    writes were not stored, and the same request may be sent again."""
    if exc.disk_full:
        status, retry, what = 507, DISK_FULL_RETRY_SECONDS, "the disk is full"
    else:
        status, retry, what = 503, WRITE_FAILED_RETRY_SECONDS, "the store could not write"
    return error_response(
        status,
        f"{what}, nothing of this request was stored; retry later ({exc.reason})",
        None,
        **{"Retry-After": str(retry)},
    )


def own_tenant(events: list[Event] | Columns, tenant_id: str) -> list[Event] | Columns:
    """Events as the credential's tenant sends them: its tenant where none is named, and
    AuthError (403) for one that names another."""
    if isinstance(events, Columns):
        for named, tenant in zip(events.named, events.tenants, strict=True):
            if named and tenant != tenant_id:
                raise AuthError(403, f"tenant_id: this credential is for {tenant_id!r} only")
        return events.for_tenant(tenant_id)
    out = []
    for event in events:
        if "tenant_id" in event.given and event.tenant_id != tenant_id:
            raise AuthError(403, f"tenant_id: this credential is for {tenant_id!r} only")
        out.append(replace(event, tenant_id=tenant_id))
    return out
