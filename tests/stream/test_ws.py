"""WebSocket stream: filters, resume, client messages, shutdown."""

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from tests.helpers import serve
from tests.stream.conftest import Running, push, recv, recv_type

pytestmark = pytest.mark.anyio


async def test_connected_then_each_batch_as_one_metrics_message(
    running: Running, http: httpx.AsyncClient
) -> None:
    def batch(total: int, ratio: float) -> dict[str, object]:
        return {
            "events": [
                {"source": "compression", "kind": "counter",
                 "metrics": {"metrics.total_tokens_saved": total}},
                {"source": "compression", "kind": "gauge", "metrics": {"metrics.ratio": ratio}},
            ]
        }  # fmt: skip

    async with connect(running.ws) as ws:
        hello = await recv_type(ws, "connected")
        assert hello["resumed"] is None and hello["cursor"].endswith(":0")
        assert hello["message"] == "WebSocket connection established"
        await http.post("/ingest", json=batch(1000, 0.5))
        seq = (await http.post("/ingest", json=batch(1012, 0.4))).json()["seq"]
        first, second = await recv_type(ws, "metrics"), await recv_type(ws, "metrics")
    assert first["data"] == {"compression": {"metrics": {"total_tokens_saved": 1000, "ratio": 0.5}}}
    assert first["deltas"] == {}
    assert second["data"] == {
        "compression": {"metrics": {"total_tokens_saved": 1012, "ratio": 0.4}}
    }
    assert second["deltas"] == {"compression": {"metrics.total_tokens_saved": 12}}
    assert second["seq"] == seq and second["cursor"] == f"{hello['cursor'].split(':')[0]}:{seq}"


async def test_filter_on_tool_gets_only_that_tools_batches(
    running: Running, http: httpx.AsyncClient
) -> None:
    async with connect(running.ws + "?tool_id=a") as only_a, connect(running.ws) as everything:
        await recv_type(only_a, "connected")
        await recv_type(everything, "connected")
        for tool in ("a", "b", "a", "b"):
            await push(http, tool_id=tool, metrics={"total": 1})
        got_a = [await recv_type(only_a, "metrics") for _ in range(2)]
        got_all = [await recv_type(everything, "metrics") for _ in range(4)]
        with pytest.raises(TimeoutError):
            await recv(only_a, wait=0.5)
    assert [m["tool_id"] for m in got_a] == ["a", "a"]
    assert [m["seq"] for m in got_a] == [got_all[0]["seq"], got_all[2]["seq"]]


async def test_filter_on_tenant_gets_only_that_tenants_batches(
    running: Running, http: httpx.AsyncClient
) -> None:
    async with connect(running.ws + "?tenant_id=acme") as ws:
        await recv_type(ws, "connected")
        await push(http, tenant_id="other", metrics={"secret": 1})
        await push(http, tenant_id="acme", metrics={"mine": 2})
        message = await recv_type(ws, "metrics")
        assert message["data"] == {"compression": {"mine": 2}}
        with pytest.raises(TimeoutError):
            await recv(ws, wait=0.5)


async def test_resume_gets_exactly_the_missed_batches_then_live(
    running: Running, http: httpx.AsyncClient
) -> None:
    async with connect(running.ws) as ws:
        await recv_type(ws, "connected")
        await push(http, metrics={"total": 1})
        cursor = (await recv_type(ws, "metrics"))["cursor"]
    missed = [await push(http, metrics={"total": 10 + i}) for i in range(25)]
    async with connect(f"{running.ws}?since={cursor}") as ws:
        hello = await recv_type(ws, "connected")
        assert hello["resumed"] is True and hello["cursor"] == cursor
        replayed = [await recv_type(ws, "metrics") for _ in missed]
        live = await push(http, metrics={"total": 99})
        assert (await recv_type(ws, "metrics"))["seq"] == live
        with pytest.raises(TimeoutError):
            await recv(ws, wait=0.3)
    assert [m["seq"] for m in replayed] == missed
    assert replayed[0]["deltas"] == {"compression": {"total": 9}}


async def test_resume_across_a_server_restart(tmp_path: anyio.Path) -> None:
    path = tmp_path / "restart.duckdb"
    with serve(create_app(Settings(db=path), Config(sources=[]))) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            async with connect(base.replace("http", "ws") + "/ws/metrics") as ws:
                await recv_type(ws, "connected")
                await push(http, metrics={"total": 5})
                cursor = (await recv_type(ws, "metrics"))["cursor"]
            before = [await push(http, metrics={"total": 6 + i}) for i in range(3)]
    with serve(create_app(Settings(db=path), Config(sources=[]))) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            after = [await push(http, metrics={"total": 20 + i}) for i in range(3)]
            async with connect(base.replace("http", "ws") + f"/ws/metrics?since={cursor}") as ws:
                assert (await recv_type(ws, "connected"))["resumed"] is True
                got = [(await recv_type(ws, "metrics"))["seq"] for _ in range(6)]
    assert got == before + after


@pytest.mark.parametrize(
    ("since", "reason"),
    [
        ("nonsense", "malformed"),
        ("00000000-0000-0000-0000-000000000000:3", "another database epoch"),
    ],
)
async def test_unusable_cursor_says_why_then_streams_live(
    running: Running, http: httpx.AsyncClient, since: str, reason: str
) -> None:
    async with connect(running.ws) as watcher:  # the push is dispatched once seen
        await recv_type(watcher, "connected")
        await push(http)
        await recv_type(watcher, "metrics")
    async with connect(f"{running.ws}?since={since}") as ws:
        hello = await recv_type(ws, "connected")
        assert hello["resumed"] is False and reason in hello["resume_error"]
        seq = await push(http)
        assert (await recv_type(ws, "metrics"))["seq"] == seq


async def test_cursor_ahead_of_the_stream_is_refused(
    running: Running, http: httpx.AsyncClient
) -> None:
    async with connect(running.ws) as ws:
        epoch = (await recv_type(ws, "connected"))["cursor"].split(":")[0]
    async with connect(f"{running.ws}?since={epoch}:999") as ws:
        hello = await recv_type(ws, "connected")
    assert hello["resumed"] is False and "ahead" in hello["resume_error"]


async def test_ping_subscribe_and_bad_messages_keep_the_connection(
    running: Running, http: httpx.AsyncClient
) -> None:
    async with connect(running.ws) as ws:
        await recv_type(ws, "connected")
        await ws.send('{"type": "ping"}')
        assert await recv(ws) == {"type": "pong"}
        for bad, says in [
            ("not json", "Invalid JSON"),
            ('{"type": "dance"}', "does not match any of the expected tags"),
            ('{"type": "subscribe", "colour": "red"}', "colour"),
            ('{"type": "subscribe", "tenant_id": "a b"}', "tenant_id"),
        ]:
            await ws.send(bad)
            error = await recv_type(ws, "error")
            assert says in error["error"], error
        await ws.send(b"\x00\x01")
        assert "binary" in (await recv_type(ws, "error"))["error"]
        await ws.send('{"type": "subscribe", "tool_id": "b"}')
        assert await recv(ws) == {"type": "subscribed", "tenant_id": None, "tool_id": "b",
                                  "session_id": None}  # fmt: skip
        await push(http, tool_id="a")
        seq = await push(http, tool_id="b")
        message = await recv_type(ws, "metrics")
        assert message["seq"] == seq and message["tool_id"] == "b"


async def test_frame_over_64_kib_closes_with_1009(running: Running) -> None:
    async with connect(running.ws, max_size=None) as ws:
        await recv_type(ws, "connected")
        await ws.send('{"type": "ping", "pad": "' + "x" * (64 * 1024) + '"}')
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_unknown_query_parameter_closes_1008_naming_it(running: Running) -> None:
    async with connect(running.ws + "?colour=red") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008 and "colour" in closed.value.rcvd.reason


async def test_shutdown_closes_with_1001_and_a_cursor(tmp_path: anyio.Path) -> None:
    app = create_app(Settings(db=tmp_path / "s.duckdb"), Config(sources=[]))
    with serve(app) as base:
        ws = await connect(base.replace("http", "ws") + "/ws/metrics")
        hello = await recv_type(ws, "connected")
    with pytest.raises(ConnectionClosed) as closed:
        await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert hello["cursor"] in closed.value.rcvd.reason


async def test_health_reports_fanout_and_commit_to_sent_times(
    running: Running, http: httpx.AsyncClient, streams: httpx.AsyncClient
) -> None:
    async with connect(running.ws) as ws:
        await recv_type(ws, "connected")
        assert (await streams.get("/health")).json()["streams"]["fanout_ms"] is None
        for _ in range(3):
            await push(http)
            await recv_type(ws, "metrics")
        streams = (await streams.get("/health")).json()["streams"]
    assert streams["clients"] == 1
    fanout, commit_to_sent = streams["fanout_ms"], streams["commit_to_sent_ms"]
    assert 0 <= fanout["p50"] <= fanout["max"]
    assert commit_to_sent["p50"] >= fanout["p50"] and commit_to_sent["max"] >= fanout["max"]


async def test_a_label_filter_and_a_subscribe_with_tags_filter_by_labels(
    running: Running, http: httpx.AsyncClient
) -> None:
    only_500 = running.ws + '?labels={"code":"500"}'
    async with connect(only_500) as ws, connect(running.ws) as changed:
        hello = await recv_type(ws, "connected")
        assert hello["labels"] == {"code": "500"}
        await recv_type(changed, "connected")
        await changed.send('{"type": "subscribe", "tags": {"code": "200"}}')
        assert (await recv_type(changed, "subscribed"))["labels"] == {"code": "200"}
        for code, value in (("200", 3), ("500", 1), ("200", 5)):
            await push(http, metrics={"http_requests_total": value}, labels={"code": code})
        got_500 = await recv_type(ws, "metrics")
        got_200 = [await recv_type(changed, "metrics") for _ in range(2)]
        with pytest.raises(TimeoutError):
            await recv(ws, wait=0.5)
    assert got_500["data"] == {"compression": {'http_requests_total{code="500"}': 1}}
    assert [m["data"]["compression"] for m in got_200] == [
        {'http_requests_total{code="200"}': 3}, {'http_requests_total{code="200"}': 5}]  # fmt: skip
    assert got_200[1]["deltas"] == {"compression": {'http_requests_total{code="200"}': 2}}


async def test_deltas_are_right_after_a_time_with_no_client_watching(
    running: Running, http: httpx.AsyncClient
) -> None:
    # Nobody is connected: the tail reads nothing and forgets what it knew.
    for total in (100, 130):
        await push(http, metrics={"total": total})
    async with connect(running.ws) as ws:
        await recv_type(ws, "connected")
        seq = await push(http, metrics={"total": 175})
        live = await recv_type(ws, "metrics")
        while live["seq"] < seq:  # a batch from before that reached the stream after it
            live = await recv_type(ws, "metrics")
    # The delta is against the last sample stored while nobody watched, not a stale one.
    assert live["deltas"] == {"compression": {"total": 45}}
