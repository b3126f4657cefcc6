"""`POST /ingest` against the real app under uvicorn."""

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from schemas.signals import Appended
from tests.helpers import Push, serve


@pytest.fixture
def base(tmp_path: Path) -> Iterator[str]:
    app = create_app(Settings(db=tmp_path / "push.duckdb"), Config(sources=[]))
    with serve(app) as url:
        yield url


def event(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "source": "compression",
        "kind": "delta",
        "metrics": {"tokens_saved": 1234},
        "tool_id": "claude-code",
        "session_id": "s-1",
    }
    doc.update(overrides)
    return doc


@pytest.fixture(params=["small", "large"])
def post(request: pytest.FixtureRequest) -> Push:
    return Push(request.param == "large")


def stored(base: str, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base}/api/v1/series", params=params)
    assert response.status_code == 200, response.text
    samples: list[dict[str, Any]] = response.json()["samples"]
    return samples


def test_push_is_committed_before_the_202(base: str, post: Push) -> None:
    response = post(f"{base}/ingest", event())
    assert response.status_code == 202
    body = response.json()
    assert body == {"accepted": 1, "seq": 1}
    (sample,) = stored(base)
    assert sample["metric"] == "tokens_saved" and sample["value"] == 1234
    assert sample["kind"] == "delta" and sample["tool_id"] == "claude-code"
    assert sample["tenant_id"] == "local" and sample["session_id"] == "s-1"


def test_commit_listeners_hear_each_push_committed_before_its_202(tmp_path: Path) -> None:
    heard: list[Appended] = []
    app = create_app(Settings(db=tmp_path / "l.duckdb"), Config(sources=[]), [heard.append])
    with serve(app) as base:
        seqs = []
        for n in (1, 3):
            sent = time.time()
            response = httpx.post(f"{base}/ingest", json={"events": [event()] * n})
            acked = time.time()
            seqs.append(response.json()["seq"])
            assert sent < heard[-1].committed_at < acked
    assert [(a.first_seq, a.last_seq) for a in heard] == [(1, 1), (2, 4)] and seqs == [1, 4]


def test_batch_push_is_one_batch_in_time_order(base: str, post: Push) -> None:
    events = [
        event(ts="2026-11-25T10:00:02Z", metrics={"a": 2}),
        event(ts="2026-11-25T12:00:01+02:00", metrics={"a": 1, "b": 5}),
    ]
    response = post(f"{base}/ingest", {"events": events})
    assert response.json() == {"accepted": 2, "seq": 3}
    samples = stored(base, **{"from": "2026-11-25T00:00:00Z", "to": "2026-11-26T00:00:00Z"})
    assert [(s["metric"], s["ts"]) for s in samples] == [
        ("a", "2026-11-25T10:00:01.000Z"),
        ("b", "2026-11-25T10:00:01.000Z"),
        ("a", "2026-11-25T10:00:02.000Z"),
    ]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"events": [event(), event(kind="bogus")]}, "events.1.kind"),
        ({"events": [event(), event(metrics={"x": "12"})]}, "events.1.metrics.x"),
        ({"events": [event(metrics={"x": True})]}, "events.0.metrics.x"),
        ({"events": [event(metrics={})]}, "events.0.metrics"),
        (event(colour="blue"), "colour"),
        ({k: v for k, v in event().items() if k != "kind"}, "kind"),
        (event(ts="yesterday"), "ts"),
        (event(ts="2026-11-25T10:00:00"), "ts"),
        (event(ts="2026-11-20T23:59:60Z"), "ts"),
        ({"events": [event(), event(ts="2026-02-30T10:00:00Z")]}, "events.1.ts"),
        (event(tenant_id="a b"), "tenant_id"),
        ({"events": []}, "events"),
        ([1, 2], "Input should be"),
    ],
    ids=["bad-kind", "string-value", "bool-value", "no-metrics", "unknown-field", "no-kind",
         "bad-ts", "naive-ts", "leap-second", "no-such-day", "bad-tenant", "empty-batch",
         "not-an-object"],
)  # fmt: skip
def test_invalid_push_is_422_naming_the_field_and_stores_nothing(
    base: str, body: Any, names: str, post: Push
) -> None:
    response = post(f"{base}/ingest", body)
    assert response.status_code == 422
    assert names in response.json()["error"]
    assert stored(base) == []


@pytest.mark.parametrize(
    "raw",
    [b'{"source": "c", "kind": "delta", "metrics": {"x": NaN}}', b"not json", b""],
    ids=["nan", "garbage", "empty"],
)
def test_body_that_is_not_strict_json_is_422(base: str, raw: bytes) -> None:
    response = httpx.post(
        f"{base}/ingest", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["error"]
    assert stored(base) == []


def test_repeated_event_id_is_stored_once_and_still_accepted(base: str, post: Push) -> None:
    first = post(f"{base}/ingest", event(event_id="e-1"))
    assert first.json() == {"accepted": 1, "seq": 1}
    again = post(
        f"{base}/ingest",
        {"events": [event(event_id="e-1"), event(event_id="e-2"), event(event_id="e-2")]},
    )
    assert again.status_code == 202
    assert again.json() == {"accepted": 3, "seq": 2}
    assert len(stored(base)) == 2
    # Idempotency keys are per tenant: another tenant may use the same id.
    other = post(f"{base}/ingest", event(event_id="e-1", tenant_id="acme"))
    assert other.json() == {"accepted": 1, "seq": 3}


def test_body_over_10_mib_is_413_and_stores_nothing(base: str) -> None:
    big = b'{"events": [' + b" " * (10 * 1024 * 1024) + b"]}"
    response = httpx.post(
        f"{base}/ingest", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "limit" in response.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap holds while streaming
        yield b'{"events": ['
        for _ in range(11):
            yield b" " * (1024 * 1024)
        yield b"]}"

    streamed = httpx.post(f"{base}/ingest", content=chunks())
    assert streamed.status_code == 413
    assert stored(base) == []


def test_more_than_10000_events_is_422(base: str) -> None:
    response = httpx.post(f"{base}/ingest", json={"events": [event()] * 10_001}, timeout=30)
    assert response.status_code == 422
    assert "events" in response.json()["error"]
    assert stored(base) == []


def test_push_served_beside_the_framework_keeps_cors_its_description_and_other_methods(
    tmp_path: Path,
) -> None:
    """`POST /ingest` is served by its own ASGI app, not through FastAPI's stack: what a
    browser and the API's readers see of it is unchanged."""
    settings = Settings(db=tmp_path / "p.duckdb", allowed_origins="https://dash.example.com")
    with serve(create_app(settings, Config(sources=[]))) as url:
        allowed = httpx.post(f"{url}/ingest", json=event(),
                             headers={"Origin": "https://dash.example.com"})  # fmt: skip
        assert allowed.status_code == 202, allowed.text
        assert allowed.headers["access-control-allow-origin"] == "https://dash.example.com"
        other = httpx.post(f"{url}/ingest", json=event(), headers={"Origin": "https://x.example"})
        assert "access-control-allow-origin" not in other.headers
        assert httpx.get(f"{url}/ingest").status_code == 405
        described = httpx.get(f"{url}/openapi.json").json()["paths"]["/ingest"]["post"]
        assert set(described["responses"]) >= {"202", "413", "422", "429", "503", "507"}
        bad = httpx.post(f"{url}/ingest?x=1", json=event())
        assert bad.status_code == 422 and "x" in bad.json()["error"]
        assert [s["value"] for s in stored(url)] == [1234, 1234]


def test_a_client_that_leaves_mid_body_stores_nothing_and_logs_no_traceback(
    base: str, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b'Content-Length: 100\r\n\r\n{"source": "gone", ')  # fmt: skip
    # The server hears of the close before the next connection's request.
    assert httpx.post(f"{base}/ingest", json=event()).status_code == 202
    deadline = time.monotonic() + 0.5  # a traceback would be logged at once
    while time.monotonic() < deadline:
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        time.sleep(0.05)
    assert [s["source"] for s in stored(base)] == ["compression"]
