"""JSON responses (orjson), and one error shape for every route:
`{"error": "<one line>", "detail": [...]}`."""

from collections.abc import Sequence
from typing import Any

import orjson
from starlette.responses import Response


class JSONResponse(Response):
    """JSON encoded by orjson: fast, and strict about NaN (written as null)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def describe_errors(errors: Sequence[Any]) -> str:
    """Pydantic/FastAPI validation errors as one line naming each bad field."""
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
    more = f" (and {len(parts) - 3} more)" if len(parts) > 3 else ""
    return "; ".join(parts[:3]) + more


def clean_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Errors without the echoed input, which may be large or not JSON-serialisable."""
    return [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]


def error_response(status: int, message: str, detail: Any = None, **headers: str) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers or None)


def validation_error_response(errors: Sequence[Any]) -> JSONResponse:
    return error_response(422, describe_errors(errors), clean_errors(errors))
