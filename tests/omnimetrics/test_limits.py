"""Browsers (CORS, WebSocket Origin), limits and TLS: each configurable, each answered with
a reason and a retry hint."""

import asyncio
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from tests.helpers import free_port, serve, wait_for
from tests.stream.conftest import recv, recv_type


def served(tmp_path: Path, **settings: Any) -> Any:
    return serve(create_app(Settings(db=tmp_path / "l.duckdb", **settings), Config(sources=[])))


# ---- browsers ----


def test_cors_answers_only_allowed_origins_and_never_star_with_credentials(
    tmp_path: Path,
) -> None:
    with served(tmp_path, allowed_origins="https://dash.example.com") as base:
        ok = httpx.get(f"{base}/api/v1/latest", headers={"Origin": "https://dash.example.com"})
        assert ok.headers["access-control-allow-origin"] == "https://dash.example.com"
        assert ok.headers["access-control-allow-credentials"] == "true"
        assert "x-omnimetrics-cursor" in ok.headers["access-control-expose-headers"].lower()
        evil = httpx.get(f"{base}/api/v1/latest", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in evil.headers
        preflight = httpx.options(f"{base}/settings", headers={
            "Origin": "https://dash.example.com", "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "authorization, content-type"})  # fmt: skip
        assert preflight.status_code == 200
        assert "PUT" in preflight.headers["access-control-allow-methods"]
    with served(tmp_path, allowed_origins="*") as base:
        anyone = httpx.get(f"{base}/api/v1/latest", headers={"Origin": "https://x.example"})
        assert anyone.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in anyone.headers
    with served(tmp_path) as base:  # the default: same origin only
        none = httpx.get(f"{base}/api/v1/latest", headers={"Origin": "https://x.example"})
        assert "access-control-allow-origin" not in none.headers


@pytest.mark.anyio
async def test_websocket_origin_is_checked_against_the_same_list(tmp_path: Path) -> None:
    with served(tmp_path, allowed_origins="https://dash.example.com") as base:
        ws = base.replace("http://", "ws://") + "/ws/metrics"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws, origin="https://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        for origin in ("https://dash.example.com", base):  # listed, or the same origin
            async with connect(ws, origin=origin) as ok:  # type: ignore[arg-type]
                await recv_type(ok, "connected")
        async with connect(ws) as no_origin:  # not a browser
            await recv_type(no_origin, "connected")


# ---- limits ----


@pytest.mark.anyio
async def test_open_streams_per_tenant_and_in_total(tmp_path: Path) -> None:
    with served(tmp_path, max_streams_per_tenant=2, max_streams=3) as base:
        ws = base.replace("http://", "ws://") + "/ws/metrics"
        a1, a2 = await connect(ws), await connect(f"{ws}?tenant_id=local")
        for c in (a1, a2):
            await recv_type(c, "connected")
        async with connect(ws) as third:
            with pytest.raises(ConnectionClosed) as closed:
                await recv(third)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert "tenant 'local'" in closed.value.rcvd.reason
        assert "retry after" in closed.value.rcvd.reason
        async with httpx.AsyncClient(base_url=base) as http:
            sse = await http.get("/stream/metrics")
            assert sse.status_code == 503 and sse.headers["retry-after"] == "10"
            b = await connect(f"{ws}?tenant_id=acme")
            await recv_type(b, "connected")
            total = await http.get("/stream/metrics", params={"tenant_id": "other"})
            assert total.status_code == 503 and "limit 3" in total.json()["error"]
        for c in (a1, a2, b):
            await c.close()
        # Closed streams free their places.
        wait_for(lambda: httpx.get(f"{base}/health").json()["streams"]["clients"] == 0)
        async with connect(ws) as again:
            await recv_type(again, "connected")


@pytest.mark.anyio
async def test_new_streams_per_second(tmp_path: Path) -> None:
    with served(tmp_path, new_streams_per_second=2) as base:
        ws = base.replace("http://", "ws://") + "/ws/metrics"
        codes = []
        for _ in range(4):
            async with connect(ws) as c:
                try:
                    codes.append((await recv(c))["type"])
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None
                    codes.append(exc.rcvd.code)
        assert codes[:2] == ["connected", "connected"] and 1013 in codes[2:]
        await anyio.sleep(1.1)
        async with connect(ws) as later:
            await recv_type(later, "connected")


def test_body_size_is_capped_on_every_route(tmp_path: Path) -> None:
    with served(tmp_path, max_body_bytes=2048) as base:
        big = {"metrics_streaming": True, "pad": "x" * 4096}
        declared = httpx.put(f"{base}/settings", json=big)
        assert declared.status_code == 413 and "2048" in declared.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length
            yield b'{"metrics_streaming": true, "x": "'
            for _ in range(4):
                yield b"y" * 1024
            yield b'"}'

        streamed = httpx.put(f"{base}/settings", content=chunks(),
                             headers={"content-type": "application/json"})  # fmt: skip
        assert streamed.status_code == 413
        event = {"source": "s", "kind": "gauge", "metrics": {f"m{i}": 1 for i in range(300)}}
        assert httpx.post(f"{base}/ingest", json=event).status_code == 413
        assert httpx.get(f"{base}/settings").json()["settings"]["metrics_streaming"] is True


def test_events_per_request_and_per_minute(tmp_path: Path) -> None:
    event = {"source": "s", "kind": "gauge", "metrics": {"m": 1}}
    with served(tmp_path, max_events_per_request=5, max_ingest_events_per_minute=12) as base:
        six = httpx.post(f"{base}/ingest", json={"events": [event] * 6})
        assert six.status_code == 422 and "at most 5" in six.json()["error"]
        for _ in range(2):
            assert httpx.post(f"{base}/ingest", json={"events": [event] * 5}).status_code == 202
        over = httpx.post(f"{base}/ingest", json={"events": [event] * 5})
        assert over.status_code == 429
        assert "12 events per minute" in over.json()["error"]
        assert 1 <= int(over.headers["retry-after"]) <= 60
        # Another tenant has its own minute; the refused request stored nothing.
        acme = {"events": [{**event, "tenant_id": "acme"}] * 5}
        assert httpx.post(f"{base}/ingest", json=acme).status_code == 202
        stored = httpx.get(f"{base}/api/v1/series", params={"tenant_id": "local"}).json()
        assert len(stored["samples"]) == 10


# ---- TLS ----


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_path)
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(cert_path, append=True)
    cert.private_key_pem.write_to_path(key_path)
    return ca, cert_path, key_path


def test_serve_speaks_https_and_wss(
    tmp_path: Path, certificate: tuple[trustme.CA, Path, Path]
) -> None:
    ca, cert_path, key_path = certificate
    port = free_port()
    (tmp_path / "none.toml").write_text("sources = []\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnimetrics.cli", "serve", "--port", str(port),
         "--db", str(tmp_path / "tls.duckdb"), "--config", str(tmp_path / "none.toml"),
         "--ssl-certfile", str(cert_path), "--ssl-keyfile", str(key_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    context = ssl.create_default_context()
    ca.configure_trust(context)
    base = f"https://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, "the server exited"
            try:
                return httpx.get(f"{base}/health", verify=context).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30, interval=0.1)
        with pytest.raises(httpx.HTTPError):  # a client that does not trust it refuses
            httpx.get(f"{base}/health")
        with pytest.raises(httpx.HTTPError):  # and plain http is not served
            httpx.get(f"http://127.0.0.1:{port}/health")
        event = {"source": "s", "kind": "gauge", "metrics": {"m": 3}}
        assert httpx.post(f"{base}/ingest", verify=context, json=event).status_code == 202

        async def over_wss() -> None:
            async with connect(f"wss://127.0.0.1:{port}/ws/metrics", ssl=context) as ws:
                await recv_type(ws, "connected")
                async with httpx.AsyncClient(verify=context) as http:
                    pushed = (await http.post(f"{base}/ingest", json=event)).json()["seq"]
                # The first push may still be on its way to the hub when this connects.
                while (seq := (await recv_type(ws, "metrics"))["seq"]) != pushed:
                    assert seq < pushed

        asyncio.run(over_wss())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_bad_certificate_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    done = subprocess.run(
        [sys.executable, "-m", "omnimetrics.cli", "serve", "--db", str(tmp_path / "x.duckdb"),
         "--ssl-certfile", str(bad), "--ssl-keyfile", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "TLS" in done.stderr
    half = subprocess.run(
        [sys.executable, "-m", "omnimetrics.cli", "serve", "--ssl-certfile", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert half.returncode == 2 and "both or neither" in half.stderr
