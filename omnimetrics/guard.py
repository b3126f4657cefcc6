"""What every request passes before it reaches a route (SECURITY.md).

- Request bodies over `max_body_bytes`: 413.
- WebSocket `Origin` (cross-site WebSocket hijacking): a browser page may open a stream
  only from this server's own origin or one in `OMNIMETRICS_ALLOWED_ORIGINS`; others
  are refused at the handshake (HTTP 403).
- With `OMNIMETRICS_JWT_SECRET` set: a valid credential on everything but `/health` and
  the dashboard's static files (401 with the reason; a WebSocket is accepted, then closed
  1008 with the reason, so a browser can show it). The tenant is the credential's: a
  `tenant_id` parameter naming another is a 403 (WebSocket: 1008), and a route that takes
  `tenant_id` gets the credential's when none is given, so nothing can widen it. Scopes:
  `write` for `POST /ingest`, `admin` to change settings, for `/api/v1/batches` and for
  `/metrics` (open with `OMNIMETRICS_METRICS_PUBLIC=true`), `read` for the rest; a
  `gateway` credential reads every tenant's `/api/v1/batches` and nothing else.

The credential travels as `Authorization: Bearer <jwt>`, or as `?token=` on the two
stream routes (browsers cannot set headers there).
"""

import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson

from schemas.auth import AuthError, Principal, Scope, bearer, verify

ASGI = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]

OPEN_PATHS = frozenset(("/health", "/", "/docs", "/redoc", "/openapi.json"))
OPEN_PREFIXES = ("/static/", "/docs/")
STREAM_PATHS = frozenset(("/ws/metrics", "/stream/metrics"))
# Routes without a `tenant_id` parameter (the tenant is in the body, or none applies).
NO_TENANT_PARAM = frozenset(("/ingest", "/settings/profiles", "/metrics"))
ADMIN = frozenset((("PUT", "/settings"), ("POST", "/settings/reset"), ("GET", "/metrics"),
                   ("GET", "/api/v1/batches")))  # fmt: skip
METRICS_PATH = "/metrics"
BATCHES_PATH = "/api/v1/batches"


def required_scope(method: str, path: str) -> Scope:
    if (method, path) in ADMIN:
        return "admin"
    if method == "POST" and path == "/ingest":
        return "write"
    return "read"


def _headers(scope: MutableMapping[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


class Guard:
    def __init__(
        self,
        app: ASGI,
        *,
        secret: str | None,
        allowed_origins: list[str],
        max_body_bytes: int,
        origin_regex: str | None = None,
        metrics_public: bool = False,
        push: ASGI | None = None,
    ) -> None:
        self.app = app
        self.push = push or app  # `POST /ingest`, checked like every request
        self.metrics_public = metrics_public  # `/metrics` without a credential
        self.secret = secret
        self.allowed_origins = frozenset(allowed_origins)
        self.origin_pattern = re.compile(origin_regex) if origin_regex else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        """HTTP requests, checked and passed on to the app (with their body capped)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await _json(send, 413, f"request body is over the {self.max_body_bytes}-byte limit")
            return
        if self.secret is not None and not self._is_open(scope["path"]):
            try:
                scope = self._authorize(scope, headers, scope["method"])
            except AuthError as exc:
                await _json(send, exc.status, exc.reason, _challenge(exc))
                return
        if scope["path"] == "/ingest":  # reads its own body, under the same cap
            await (self.push if scope["method"] == "POST" else self.app)(scope, receive, send)
            return
        body = await self._read_capped(receive)
        if body is None:
            await _json(send, 413, f"request body is over the {self.max_body_bytes}-byte limit")
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_capped(self, receive: Any) -> bytes | None:
        """The whole body (small on every route but /ingest), or None past the cap."""
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(parts)

    async def websocket(
        self, scope: MutableMapping[str, Any], receive: Any, send: Any
    ) -> MutableMapping[str, Any] | None:
        """The scope to serve the WebSocket with, or None once it has been refused.
        (Not a wrapper: nothing of the guard stays on the stack of a long connection.)"""
        headers = _headers(scope)
        if not self._origin_allowed(headers):
            await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
            return None
        if self.secret is None or self._is_open(scope["path"]):
            return scope
        try:
            return self._authorize(scope, headers, "GET")
        except AuthError as exc:
            if (await receive())["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": 1008, "reason": exc.reason})
            return None

    def _is_open(self, path: str) -> bool:
        return _is_open(path) or (self.metrics_public and path == METRICS_PATH)

    def _origin_allowed(self, headers: dict[str, str]) -> bool:
        origin = headers.get("origin")
        if origin is None:
            return True  # not a browser: nothing to hijack
        origin = origin.rstrip("/")
        if origin in self.allowed_origins or "*" in self.allowed_origins:
            return True
        if self.origin_pattern is not None and self.origin_pattern.fullmatch(origin):
            return True
        return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()

    # ---- the credential ----

    def _authorize(
        self, scope: MutableMapping[str, Any], headers: dict[str, str], method: str
    ) -> MutableMapping[str, Any]:
        """The scope to pass on (with the principal and the tenant), or AuthError."""
        assert self.secret is not None
        path = scope["path"]
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        token = bearer(headers)
        if token is None and path in STREAM_PATHS:
            token = next((v for k, v in query if k == "token"), None)
        if token is None:
            raise AuthError(401, "a credential is required: Authorization: Bearer <token>")
        principal = verify(token, self.secret)
        needed = required_scope(method, path)
        every_tenant = method == "GET" and path == BATCHES_PATH and principal.can("gateway")
        if not every_tenant and not principal.can(needed):
            raise AuthError(403, f"this needs the {needed!r} scope")
        scope = dict(scope)
        if path not in NO_TENANT_PARAM and not every_tenant:
            scope["query_string"] = _own_tenant(query, principal).encode("latin-1")
        scope["state"] = {**scope.get("state", {}), "principal": principal}
        return scope


def _own_tenant(query: list[tuple[str, str]], principal: Principal) -> str:
    asked = [v for k, v in query if k == "tenant_id"]
    if any(v != principal.tenant_id for v in asked):
        raise AuthError(403, f"tenant_id: this credential is for {principal.tenant_id!r} only")
    if not asked:
        query = [*query, ("tenant_id", principal.tenant_id)]
    return urlencode(query)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then the disconnect, when it comes

    return replay


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _challenge(exc: AuthError) -> list[tuple[bytes, bytes]]:
    if exc.status != 401:
        return []
    return [(b"www-authenticate", b'Bearer realm="omnimetrics"')]


async def _json(
    send: Any, status: int, message: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *extra]})
    await send({"type": "http.response.body", "body": body})
