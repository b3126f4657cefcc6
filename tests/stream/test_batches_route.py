"""`GET /api/v1/batches`: the stream's batches after a cursor, paged, with their rows and
deltas as the stream's messages carry them; filters, auth, and every bad input a 422."""

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from ingest.writer import Writer
from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings, SourceConfig
from schemas.auth import issue
from schemas.db import Database
from schemas.labels import canonical, text_form
from schemas.nested import json_value
from schemas.rows import SampleRow
from schemas.signals import AppendSignal
from stream.batches import KnownSeries, read_batches
from stream.history import read_batches_after
from stream.routes import MSGPACK
from stream.wire import decode_page
from tests.helpers import Reply, Upstream, serve, wait_for
from tests.stream.conftest import recv_type

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 11, 20, tzinfo=UTC)
SECRET = "a-test-secret-that-is-long-enough-0123456789"
PUSHES: list[dict[str, Any]] = [
    {"source": "compression", "kind": "counter", "metrics": {"total": 5, "bytes": 100}},
    {"source": "compression", "kind": "gauge", "metrics": {"ratio": 0.5}, "tool_id": "a"},
    {"source": "compression", "kind": "counter", "metrics": {"total": 8, "bytes": 150}},
    {"source": "api", "kind": "counter", "metrics": {"requests": 3}, "tenant_id": "acme",
     "labels": {"code": "200"}},
    {"source": "compression", "kind": "counter", "metrics": {"total": 2}},  # a restart
    {"source": "api", "kind": "counter", "metrics": {"requests": 7}, "tenant_id": "acme",
     "labels": {"code": "200"}, "session_id": "s1"},
    {"source": "api", "kind": "gauge", "metrics": {"requests": 1.5e308}, "tenant_id": "acme",
     "labels": {"code": "500"}},
]  # fmt: skip


async def _pushed(http: httpx.AsyncClient) -> list[int]:
    seqs = []
    for body in PUSHES:
        response = await http.post("/ingest", json=body)
        assert response.status_code == 202, response.text
        seqs.append(response.json()["seq"])
    return seqs


async def _stream(ws_url: str, epoch: str, last: int) -> list[dict[str, Any]]:
    """What a WebSocket client resuming from the start receives, up to seq `last`."""
    got = []
    async with connect(f"{ws_url}?since={epoch}:0") as ws:
        await recv_type(ws, "connected")
        while not got or got[-1]["seq"] < last:
            got.append(await recv_type(ws, "metrics"))
    return got


async def test_batches_are_what_the_stream_carries_in_order_and_paged(tmp_path: Path) -> None:
    with serve(create_app(Settings(db=tmp_path / "b.duckdb"), Config(sources=[]))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            seqs = await _pushed(http)
            whole = (await http.get("/api/v1/batches")).json()
            epoch = whole["cursor"].split(":")[0]
            messages = await _stream(base.replace("http", "ws") + "/ws/metrics", epoch, seqs[-1])

            # Every batch once, in seq order, each as its stream message carries it.
            assert whole["more"] is False and whole["cursor"] == f"{epoch}:{seqs[-1]}"
            assert [b["seq"] for b in whole["batches"]] == seqs == [m["seq"] for m in messages]
            for batch, message in zip(whole["batches"], messages, strict=True):
                assert batch["cursor"] == message["cursor"]
                assert batch["timestamp"] == message["timestamp"] and batch["failures"] == []
                assert [r["seq"] for r in batch["rows"]] == list(
                    range(batch["seq"] - len(batch["rows"]) + 1, batch["seq"] + 1)
                )
                for row in batch["rows"]:
                    key = text_form(row["metric"], canonical(row["labels"]))
                    assert message["data"][row["source"]][key] == row["value"]
                    assert message["deltas"].get(row["source"], {}).get(key) == row["delta"]
            rows = {(r["source"], r["metric"], r["value"]): r for b in whole["batches"]
                    for r in b["rows"]}  # fmt: skip
            assert rows[("compression", "total", 8)]["delta"] == 3
            assert rows[("compression", "total", 2)]["delta"] == 2  # a restart: new work
            assert rows[("compression", "ratio", 0.5)]["delta"] is None  # a gauge
            assert rows[("compression", "total", 5)]["delta"] is None  # its first sample
            assert rows[("api", "requests", 3)]["labels"] == {"code": "200"}
            assert rows[("api", "requests", 7)]["session_id"] == "s1"
            assert rows[("api", "requests", 7)]["delta"] is None  # another series (session)
            assert {r["tenant_id"] for r in rows.values()} == {"local", "acme"}

            # Pages of two: the same batches, each page starting at the last one's cursor.
            paged, since, pages = [], None, 0
            while True:
                params = {"limit": 2, **({"since": since} if since else {})}
                page = (await http.get("/api/v1/batches", params=params)).json()
                paged += page["batches"]
                since, pages = page["cursor"], pages + 1
                if not page["more"]:
                    break
            assert paged == whole["batches"] and pages == (len(seqs) + 1) // 2
            assert since == whole["cursor"]
            after_all = (await http.get("/api/v1/batches", params={"since": since})).json()
            assert after_all == {"batches": [], "cursor": since, "more": False}

            # A filter: only what it sees, and the cursor still reaches the end.
            acme = (await http.get("/api/v1/batches", params={"tenant_id": "acme"})).json()
            assert {r["tenant_id"] for b in acme["batches"] for r in b["rows"]} == {"acme"}
            assert [b["seq"] for b in acme["batches"]] == [seqs[3], seqs[5], seqs[6]]
            assert acme["cursor"] == whole["cursor"] and acme["more"] is False
            params = {"tenant_id": "acme", "session_id": "s1", "limit": 1}
            one = (await http.get("/api/v1/batches", params=params)).json()
            assert one["batches"] == [] and one["more"] is True
            assert one["cursor"] == f"{epoch}:{seqs[0]}"
            # For gateways, the same batches by column (MessagePack); no filter there.
            packed = await http.get("/api/v1/batches", headers={"Accept": "application/msgpack"})
            assert packed.headers["content-type"] == "application/msgpack"
            batches, cursor, more = decode_page(packed.content)
            assert (cursor, more) == (whole["cursor"], False)
            assert [b.last_seq for b in batches] == seqs
            assert [(r.seq, json_value(r.value), None if r.delta is None else json_value(r.delta))
                    for b in batches for r in b.rows] == [
                (r["seq"], r["value"], r["delta"]) for b in whole["batches"] for r in b["rows"]
            ]  # fmt: skip
            refused = await http.get("/api/v1/batches", params={"tenant_id": "acme"},
                                     headers={"Accept": "application/x-msgpack"})  # fmt: skip
            assert refused.status_code == 422 and "JSON" in refused.json()["error"]
            code = {"labels": '{"code": "200"}'}
            labeled = (await http.get("/api/v1/batches", params=code)).json()
            assert [b["seq"] for b in labeled["batches"]] == [seqs[3], seqs[5]]


async def test_bad_input_is_a_422_naming_it(tmp_path: Path) -> None:
    with serve(create_app(Settings(db=tmp_path / "b.duckdb"), Config(sources=[]))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            seqs = await _pushed(http)
            epoch = (await http.get("/api/v1/batches")).json()["cursor"].split(":")[0]
            for params, words in [
                ({"since": "nonsense"}, "malformed cursor"),
                ({"since": f"{epoch}:x"}, "malformed cursor"),
                ({"since": f"other:{seqs[0]}"}, f"epoch (this database's epoch is {epoch})"),
                ({"since": f"{epoch}:{seqs[-1] + 1}"}, "ahead of the stream"),
                ({"limit": 0}, "limit"),
                ({"limit": 10_001}, "limit"),
                ({"limit": "many"}, "limit"),
                ({"tenant_id": "a b"}, "tenant_id"),
                ({"labels": "code=200"}, "labels"),
                ({"since": "x" * 201}, "since"),
                ({"extra": "1"}, "extra"),
            ]:  # fmt: skip
                response = await http.get("/api/v1/batches", params=params)
                assert response.status_code == 422, (params, response.text)
                assert words in response.json()["error"], (params, response.json())
            assert len((await http.get("/api/v1/batches")).json()["batches"]) == len(seqs)


async def test_with_auth_it_needs_admin_and_reads_the_credentials_tenant_only(
    tmp_path: Path,
) -> None:
    def bearer(tenant: str, *scopes: str) -> dict[str, str]:
        credential = issue(SECRET, tenant, list(scopes), int(time.time()) + 600)
        return {"Authorization": f"Bearer {credential}"}

    settings = Settings(db=tmp_path / "b.duckdb", jwt_secret=SECRET)
    with serve(create_app(settings, Config(sources=[]))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            for tenant in ("local", "acme", "acme"):
                response = await http.post("/ingest", headers=bearer(tenant, "write"), json={
                    "source": "s", "kind": "counter", "metrics": {"n": 1}})  # fmt: skip
                assert response.status_code == 202
            assert (await http.get("/api/v1/batches")).status_code == 401
            read_only = await http.get("/api/v1/batches", headers=bearer("acme", "read"))
            assert read_only.status_code == 403 and "admin" in read_only.json()["error"]
            admin = bearer("acme", "admin")
            page = (await http.get("/api/v1/batches", headers=admin)).json()
            assert len(page["batches"]) == 2 and page["more"] is False
            assert {r["tenant_id"] for b in page["batches"] for r in b["rows"]} == {"acme"}
            other = await http.get("/api/v1/batches", headers=admin, params={"tenant_id": "local"})
            assert other.status_code == 403
            # A gateway's credential: every tenant's batches, the whole stream by column...
            gateway = bearer("gateways", "gateway")
            packed = await http.get("/api/v1/batches", headers={**gateway, "Accept": MSGPACK})
            batches, _, _ = decode_page(packed.content)
            assert packed.status_code == 200 and len(batches) == 3
            # ...and nothing else: not a stream, not a push, not settings, not /metrics.
            for method, path in (("GET", "/stream/metrics"), ("GET", "/api/v1/metrics"),
                                 ("POST", "/ingest"), ("GET", "/settings"),
                                 ("GET", "/metrics")):  # fmt: skip
                refused = await http.request(method, path, headers=gateway)
                assert refused.status_code == 403, (path, refused.text)


def test_a_failed_scrape_comes_with_its_batch_to_who_sees_its_source(
    tmp_path: Path, upstream: Upstream
) -> None:
    url = upstream.script("/stats", Reply(503, b"busy"))
    config = Config(sources=[SourceConfig(name="compression", url=url, tool_id="claude-code")])
    with serve(create_app(Settings(db=tmp_path / "f.duckdb"), config)) as base:
        with httpx.Client(base_url=base, timeout=10) as http:
            page = wait_for(lambda: (p := http.get("/api/v1/batches").json())["batches"] and p)
            seen = http.get("/api/v1/batches", params={"tool_id": "claude-code"}).json()
            unseen = http.get("/api/v1/batches", params={"tool_id": "cursor"}).json()
    failures = page["batches"][0]["failures"]
    assert [(f["source"], f["tool_id"], f["tenant_id"]) for f in failures] == [
        ("compression", "claude-code", "local")
    ]
    assert failures[0]["error"] == "HTTP 503 Service Unavailable"
    assert seen["batches"][0]["failures"] == failures
    assert [r["metric"] for r in page["batches"][0]["rows"]] == ["up", "scrape_duration_seconds"]
    assert unseen["batches"] == []


async def test_a_page_holds_whole_batches_up_to_its_rows_and_limit(tmp_path: Path) -> None:
    """About `max_rows` rows and at most `limit` batches a page, never part of a batch; a
    batch larger than a page is a page of its own."""
    db = Database(tmp_path / "p.duckdb")
    writer = Writer(db, AppendSignal())
    await writer.start()
    sizes = [3, 4, 1, 12, 2, 2, 5]
    for b, size in enumerate(sizes):
        ts = T0 + timedelta(seconds=b)
        await writer.append(
            [SampleRow(ts, "local", None, None, "a", f"m{i}", "counter", b) for i in range(size)]
        )
    head = writer.last_seq
    await writer.close()
    ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    cur = db.cursor()
    for max_rows in (1, 5, 8, 10, 100):
        for limit in (1, 2, 3, 100):
            after, got = 0, []
            while after < head:
                page = read_batches_after(cur, after, head, KnownSeries(), limit, max_rows)
                assert page.end in ends and page.end > after, (max_rows, limit, after)
                assert len(page.batches) <= limit
                rows = sum(b.hi - b.lo for b in page.batches)
                assert rows <= max_rows or len(page.batches) == 1, (max_rows, limit, after)
                got += page.batches
                after = page.end
            assert [b.last_seq for b in got] == ends
            assert [r for b in got for r in b.rows] == [
                r for b in read_batches(cur, 0, head) for r in b.rows
            ]
    assert read_batches_after(cur, head, head, KnownSeries()).batches == []
    db.close()
