"""Auth on: tenant A's credential never yields a byte of tenant B's data, over every way in."""

import base64
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from schemas.auth import issue
from tests.helpers import Push, serve
from tests.stream.conftest import recv, recv_type, sse_frames

SECRET = "a-test-secret-that-is-long-enough-0123456789"
HOUR = 3600


def token(tenant: str, *scopes: str, secret: str = SECRET, ttl: int = HOUR) -> str:
    return issue(secret, tenant, list(scopes or ("read",)), int(time.time()) + ttl)


def tampered() -> str:
    """acme's token with its claims changed to globex's (the signature no longer fits)."""
    head, _, sig = token("acme").split(".")
    claims = {"tenant_id": "globex", "scopes": ["read"], "exp": int(time.time()) + HOUR}
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{body}.{sig}"


def auth(tenant: str, *scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(tenant, *scopes)}"}


@dataclass
class Running:
    base: str

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://") + "/ws/metrics"

    def push(self, tenant: str, value: float, **fields: Any) -> int:
        body = {"source": f"src-{tenant}", "kind": "counter", "tool_id": f"tool-{tenant}",
                "session_id": f"sess-{tenant}", "metrics": {"metrics.total_tokens_saved": value},
                **fields}  # fmt: skip
        response = httpx.post(f"{self.base}/ingest", json=body, headers=auth(tenant, "write"))
        assert response.status_code == 202, response.text
        seq: int = response.json()["seq"]
        return seq


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    path = tmp_path_factory.mktemp("auth") / "auth.duckdb"
    settings = Settings(db=path, jwt_secret=SECRET)
    with serve(create_app(settings, Config(sources=[]))) as base:
        run = Running(base)
        for value in (10, 25):
            run.push("acme", value)
            run.push("globex", value * 100)
        yield run


def get(run: Running, path: str, tenant: str = "acme", **params: Any) -> httpx.Response:
    return httpx.get(f"{run.base}{path}", params=params, headers=auth(tenant))


# ---- credentials ----


def test_health_and_the_dashboard_page_need_no_credential(running: Running) -> None:
    assert httpx.get(f"{running.base}/health").status_code == 200
    assert httpx.get(f"{running.base}/").status_code == 200
    assert httpx.get(f"{running.base}/static/omnimetrics.js").status_code == 200


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "credential is required"),
        ("Basic dXNlcjpwYXNz", "Bearer"),
        ("Bearer not-a-jwt", "malformed"),
        (f"Bearer {token('acme', secret='another-secret-that-is-long-enough-000')}", "signature"),
        (f"Bearer {token('acme', ttl=-10)}", "expired"),
        (f"Bearer {tampered()}", "signature"),
    ],
)
def test_a_missing_or_bad_credential_is_401_with_the_reason(
    running: Running, header: str | None, reason: str
) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.get(f"{running.base}/api/v1/latest", headers=headers)
    assert response.status_code == 401
    assert reason in response.json()["error"]
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_tokens_without_claims_or_of_another_algorithm_are_refused(running: Running) -> None:
    import jwt

    no_scopes = jwt.encode({"tenant_id": "acme", "exp": int(time.time()) + 60}, SECRET)
    unsigned = jwt.encode({"tenant_id": "acme", "scopes": ["read"], "exp": 2**40}, None,
                          algorithm="none")  # fmt: skip
    bad_tenant = issue(SECRET, "a b", ["read"], int(time.time()) + 60)
    for bad, reason in ((no_scopes, "scopes"), (unsigned, "HS256"), (bad_tenant, "tenant")):
        response = httpx.get(f"{running.base}/api/v1/latest",
                             headers={"Authorization": f"Bearer {bad}"})  # fmt: skip
        assert response.status_code == 401 and reason in response.json()["error"], bad


def test_scopes_are_enforced(running: Running) -> None:
    event = {"source": "s", "kind": "gauge", "metrics": {"m": 1}}
    read_only = httpx.post(f"{running.base}/ingest", json=event, headers=auth("acme", "read"))
    assert read_only.status_code == 403 and "write" in read_only.json()["error"]
    change = {"max_events_per_minute": 30}
    writer = httpx.put(f"{running.base}/settings", json=change, headers=auth("acme", "write"))
    assert writer.status_code == 403 and "admin" in writer.json()["error"]
    reset = httpx.post(f"{running.base}/settings/reset", headers=auth("acme", "read", "write"))
    assert reset.status_code == 403
    admin = httpx.put(f"{running.base}/settings", json=change, headers=auth("acme", "admin"))
    assert admin.status_code == 200
    no_read = httpx.get(f"{running.base}/api/v1/latest", headers=auth("acme", "write"))
    assert no_read.status_code == 403 and "read" in no_read.json()["error"]


# ---- REST ----


def test_rest_answers_hold_only_the_credentials_tenant(running: Running) -> None:
    series = get(running, "/api/v1/series").json()["samples"]
    assert series and {s["tenant_id"] for s in series} == {"acme"}
    latest = get(running, "/api/v1/latest").json()["series"]
    assert {s["tenant_id"] for s in latest} == {"acme"}
    increase = get(running, "/api/v1/increase", metric="metrics.total_tokens_saved",
                   group_by="tenant_id,source").json()  # fmt: skip
    assert increase["total"] == 15
    assert {b["tenant_id"] for b in increase["buckets"]} == {"acme"}
    # Naming another tenant is refused, not ignored.
    other = get(running, "/api/v1/series", tenant_id="globex")
    assert other.status_code == 403 and "acme" in other.json()["error"]
    # Another tenant's labels match nothing.
    assert get(running, "/api/v1/series", tool_id="tool-globex").json()["samples"] == []


@pytest.mark.parametrize("fmt", ["csv", "arrow", "parquet"])
def test_exports_in_every_format_hold_only_the_credentials_tenant(
    running: Running, fmt: str
) -> None:
    response = get(running, "/api/v1/series", format=fmt)
    assert response.status_code == 200
    if fmt == "csv":
        assert b"globex" not in response.content and b"acme" in response.content
        return
    reader = ipc.open_stream(response.content) if fmt == "arrow" else None
    table = reader.read_all() if reader else pq.read_table(io.BytesIO(response.content))
    assert set(table.column("tenant_id").to_pylist()) == {"acme"}
    assert b"globex" not in response.content


@pytest.mark.parametrize(
    "path",
    ["/metrics/current", "/metrics/history", "/metrics/aggregates", "/metrics/token-savings",
     "/metrics/by-tool", "/metrics/compare?tool_ids=tool-globex,tool-acme",
     "/sessions/sess-globex/metrics"],
)  # fmt: skip
def test_the_old_routes_hold_only_the_credentials_tenant(running: Running, path: str) -> None:
    response = httpx.get(f"{running.base}{path}", headers=auth("acme"))
    assert response.status_code == 200, response.text
    assert b"globex" not in response.content.replace(b"tool-globex", b"").replace(
        b"sess-globex", b""
    )
    body = response.json()
    if path.startswith("/metrics/compare"):
        assert body["tool-globex"]["tokens_saved"] == 0 and body["tool-acme"]["tokens_saved"] == 15
    if path.startswith("/sessions"):
        assert body["sample_count"] == 0
    if path == "/metrics/aggregates":
        assert body["total_tokens_saved"] == 15
    forced = httpx.get(f"{running.base}{path}", params={"tenant_id": "globex"},
                       headers=auth("acme"))  # fmt: skip
    assert forced.status_code == 403


def test_settings_of_another_tenant_are_out_of_reach(running: Running) -> None:
    admin = auth("acme", "read", "admin")
    mine = httpx.get(f"{running.base}/settings", headers=admin).json()
    assert mine["tenant_id"] == "acme"
    for method, path in (("GET", "/settings"), ("PUT", "/settings"), ("POST", "/settings/reset")):
        response = httpx.request(method, f"{running.base}{path}", params={"tenant_id": "globex"},
                                 json={} if method == "PUT" else None, headers=admin)  # fmt: skip
        assert response.status_code == 403, (method, path)


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
def test_pushes_land_in_the_credentials_tenant_only(running: Running, large: bool) -> None:
    post = Push(large)  # large bodies are checked per column (ingest.bulk)
    source = f"x-{large}"  # the server is shared by the module's tests
    event = {"source": source, "kind": "gauge", "metrics": {"m": 1}}
    other = post(f"{running.base}/ingest", {**event, "tenant_id": "globex"},
                 headers=auth("acme", "write"))  # fmt: skip
    assert other.status_code == 403
    mixed = {"events": [event, {**event, "tenant_id": "globex"}]}
    assert post(f"{running.base}/ingest", mixed,
                headers=auth("acme", "write")).status_code == 403  # fmt: skip
    named = post(f"{running.base}/ingest", {**event, "tenant_id": "acme", "metrics": {"m": 2}},
                 headers=auth("acme", "write"))  # fmt: skip
    assert named.status_code == 202
    landed = post(f"{running.base}/ingest", event, headers=auth("acme", "write"))
    assert landed.status_code == 202
    globex = get(running, "/api/v1/series", tenant="globex", source=source).json()["samples"]
    assert globex == []
    acme = get(running, "/api/v1/series", source=source).json()["samples"]
    assert [s["tenant_id"] for s in acme] == ["acme"] * 2


# ---- streams ----


@pytest.mark.anyio
async def test_websocket_streams_and_resumes_only_the_credentials_tenant(
    running: Running,
) -> None:
    start = (await _connected(f"{running.ws}?token={token('acme')}"))["cursor"]
    seqs = [running.push("globex", 9000), running.push("acme", 40), running.push("globex", 9999)]
    # By header, resuming from before all three: only acme's batch comes.
    headers = auth("acme")
    async with connect(f"{running.ws}?since={start}", additional_headers=headers) as ws:
        assert (await recv_type(ws, "connected"))["tenant_id"] == "acme"
        message = await recv_type(ws, "metrics")
        assert message["seq"] == seqs[1] and set(message["data"]) == {"src-acme"}
        running.push("globex", 10_000)
        mine = running.push("acme", 41)
        assert (await recv_type(ws, "metrics"))["seq"] == mine  # globex's was not sent
        # A subscribe naming another tenant ends the stream with 1008.
        await ws.send('{"type": "subscribe", "tenant_id": "globex"}')
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def _connected(url: str) -> dict[str, Any]:
    async with connect(url) as ws:
        return await recv_type(ws, "connected")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("query", "reason"),
    [("", "credential"), ("?token=nope", "malformed"), ("?tenant_id=globex&token={acme}", "acme")],
)
async def test_websocket_refusals_close_1008_with_the_reason(
    running: Running, query: str, reason: str
) -> None:
    async with connect(running.ws + query.format(acme=token("acme"))) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert reason in closed.value.rcvd.reason


@pytest.mark.anyio
async def test_sse_streams_only_the_credentials_tenant(running: Running) -> None:
    async with httpx.AsyncClient(base_url=running.base, timeout=10) as http:
        refused = await http.get("/stream/metrics", params={"tenant_id": "globex",
                                                            "token": token("acme")})  # fmt: skip
        assert refused.status_code == 403
        assert (await http.get("/stream/metrics")).status_code == 401
        async with http.stream("GET", "/stream/metrics", params={"token": token("acme")}) as sse:
            frames = sse_frames(sse)
            while (frame := await anext(frames)).get("event") != "connected":
                pass
            running.push("globex", 20_000)
            mine = running.push("acme", 50)
            while (frame := await anext(frames)).get("event") != "metrics":
                pass
    assert frame["id"].endswith(f":{mine}") and "globex" not in frame["data"]
