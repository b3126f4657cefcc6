"""A gateway's tail on the Redis Stream (`RedisReader`): every batch once, in seq order,
as the writer stored it; what the stream no longer holds (trimmed, or lost with a Redis
restart) taken from the writer's `/api/v1/batches` first."""

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from stream.redis_stream import RedisReader, writer_fill
from tests.helpers import RedisServer, serve
from tests.stream.test_redis_publish import _seqs, _stored

pytestmark = pytest.mark.anyio


async def _until(condition: Any, seconds: float = 20) -> None:
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 (what it waits for has no event to wait on)
            await anyio.sleep(0.05)


async def test_a_reader_gets_every_batch_once_across_trims_and_a_redis_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.duckdb"
    with RedisServer(tmp_path, **{"stream-node-max-entries": "2"}) as redis_server:
        settings = Settings(db=path, redis_url=redis_server.url, redis_maxlen=5)
        with serve(create_app(settings, Config(sources=[]))) as base:
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:

                async def push(i: int) -> int:
                    body = {"source": "s", "kind": "counter", "tool_id": f"t{i % 2}",
                            "metrics": {"n": (i * 5) % 17, "m": i}}  # fmt: skip
                    response = await http.post("/ingest", json=body)
                    assert response.status_code == 202
                    seq: int = response.json()["seq"]
                    return seq

                seqs = [await push(i) for i in range(30)]
                await _until(lambda: _seqs(redis_server.url)[-1:] == seqs[-1:])
                assert len(_seqs(redis_server.url)) < 10  # trimmed: most are only in the store
                epoch = (await http.get("/api/v1/batches", params={"limit": 1})).json()
                epoch = epoch["cursor"].split(":")[0]
                got: list[Any] = []
                reader = RedisReader(redis_server.url, 0, lambda b, _: got.extend(b),
                                     writer_fill(http, epoch, limit=7))  # fmt: skip
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(reader.run)
                    await _until(lambda: reader.position == seqs[-1])
                    assert reader.filled >= 20  # from the writer, seven batches a page
                    seqs += [await push(i) for i in range(30, 40)]  # live, from the stream
                    await _until(lambda: reader.position == seqs[-1])
                    redis_server.stop()  # loses everything; the writer republishes the last
                    seqs += [await push(i) for i in range(40, 45)]
                    redis_server.start()
                    await _until(lambda: reader.position == seqs[-1], seconds=30)
                    seqs += [await push(i) for i in range(45, 48)]
                    await _until(lambda: reader.position == seqs[-1])
                    tasks.cancel_scope.cancel()
    assert [b.last_seq for b in got] == seqs  # each once, in order
    stored = _stored(path)
    assert [r for b in got for r in b.rows] == [r for b in stored for r in b.rows]
