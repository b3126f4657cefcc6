"""HTTP route of the ingest stage: `POST /ingest`.

It reads the writer from the lifespan state (`request.state`), which
the composition root fills.
"""

from typing import Annotated, Any, cast

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError

from ingest.push import MAX_BODY_BYTES as PUSH_MAX_BODY_BYTES
from ingest.push import BodyTooLarge, InvalidBody, event_rows, parse_events, read_capped
from ingest.writer import Writer
from schemas.http import error_response, validation_error_response
from schemas.models import IngestAccepted, IngestBatch, IngestEvent, NoParams
from schemas.times import utcnow

router = APIRouter()

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
    responses={413: {"description": "body over 10 MiB"}, 422: {"description": "invalid"}},
)
async def ingest(request: Request, params: Annotated[NoParams, Query()]) -> Any:
    """Push samples. All or nothing; answered only once the events are committed."""
    writer = cast(Writer, request.state.writer)
    try:
        body = await read_capped(
            request.stream(), request.headers.get("content-length"), PUSH_MAX_BODY_BYTES
        )
        events = parse_events(body)
    except BodyTooLarge:
        return error_response(413, f"body is over the {PUSH_MAX_BODY_BYTES}-byte limit")
    except InvalidBody as exc:
        return error_response(422, str(exc))
    except ValidationError as exc:
        return validation_error_response(exc.errors())
    await writer.append_events(event_rows(events, utcnow()))
    return IngestAccepted(accepted=len(events), seq=writer.last_seq)
