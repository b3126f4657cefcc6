"""With `--demo`, the old dashboard (a page on another loopback port, :8004) may call the
API and the streams; without it, browsers keep to the same origin by default."""

from pathlib import Path

import httpx
import pytest
import websockets.sync.client

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from tests.helpers import serve


@pytest.mark.parametrize("origin", ["http://localhost:8004", "http://127.0.0.1:5173"])
def test_demo_lets_loopback_pages_call_the_api_and_streams(tmp_path: Path, origin: str) -> None:
    app = create_app(Settings(db=tmp_path / "d.duckdb", demo=True), Config(sources=[]))
    with serve(app) as base:
        response = httpx.get(f"{base}/api/v1/latest", headers={"Origin": origin})
        assert response.headers["access-control-allow-origin"] == origin
        ws_url = base.replace("http", "ws") + "/ws/metrics"
        with websockets.sync.client.connect(ws_url, origin=origin, open_timeout=5) as ws:
            assert '"connected"' in str(ws.recv(timeout=5))
        other = httpx.get(f"{base}/api/v1/latest", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_without_demo_a_loopback_page_on_another_port_is_refused(tmp_path: Path) -> None:
    app = create_app(Settings(db=tmp_path / "d.duckdb"), Config(sources=[]))
    with serve(app) as base:
        response = httpx.get(f"{base}/api/v1/latest", headers={"Origin": "http://localhost:8004"})
        assert "access-control-allow-origin" not in response.headers
        ws_url = base.replace("http", "ws") + "/ws/metrics"
        with pytest.raises(websockets.exceptions.InvalidStatus):
            websockets.sync.client.connect(ws_url, origin="http://localhost:8004", open_timeout=5)
