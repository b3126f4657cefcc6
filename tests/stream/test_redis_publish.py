"""`serve --redis-url`: every committed batch appended once to a real Redis Stream as entry
`<seq>-0`, with its rows and deltas as the store's stream reads them; publishing never
waits on Redis, and what Redis lacks (it was down, paused, restarted empty; the writer
restarted) is published again from the store."""

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from schemas.db import Database
from stream.batches import KnownSeries, read_batches
from stream.redis_stream import entry_seq
from stream.wire import decode_batch, decode_series
from tests.helpers import RedisServer, serve, wait_for

STREAM, SERIES, EPOCH = "omnimetrics:batches", "omnimetrics:series", "omnimetrics:epoch"
TENANTS, VERSION = "omnimetrics:tenants", "omnimetrics:tenants:version"
WRITER = "omnimetrics:writer"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


def _push(http: httpx.Client, i: int) -> int:
    body = {"source": "compression", "kind": "counter", "tool_id": f"t{i % 3}",
            "metrics": {"total": (i * 7) % 40, "bytes": i}}  # fmt: skip
    started = time.monotonic()
    response = http.post("/ingest", json=body)
    assert response.status_code == 202, response.text
    assert time.monotonic() - started < 2.0  # never waits on Redis
    seq: int = response.json()["seq"]
    return seq


def _entries(url: str) -> list[tuple[int, Any]]:
    """The stream's entries: (seq of the id, the batch it decodes to)."""
    client = redis.Redis.from_url(url)
    try:
        series = {int(k): decode_series(v) for k, v in client.hgetall(SERIES).items()}
        return [(entry_seq(i), decode_batch(fields[b"b"], series))
                for i, fields in client.xrange(STREAM)]  # fmt: skip
    finally:
        client.close()


def _metrics(http: httpx.Client) -> dict[str, float]:
    """`/metrics`' samples by name and labels, as prometheus-client's parser reads them."""
    out = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def _seqs(url: str) -> list[int]:
    try:
        client = redis.Redis.from_url(url)
        return [entry_seq(i) for i, _ in client.xrange(STREAM)]
    except redis.RedisError:
        return []


def _stored(path: Path) -> list[Any]:
    db = Database(path)
    try:
        cur = db.cursor()
        (head,) = cur.execute("SELECT max(seq) FROM points").fetchall()[0]
        return read_batches(cur, 0, head, KnownSeries())
    finally:
        db.close()


def _same(entries: list[tuple[int, Any]], stored: list[Any]) -> None:
    assert [seq for seq, _ in entries] == [b.last_seq for b in stored]
    for (seq, got), want in zip(entries, stored, strict=True):
        assert (got.batch, got.last_seq) == (want.batch, want.last_seq) == (want.batch, seq)
        assert got.rows == want.rows  # the deltas as the stream computes them


def test_every_committed_batch_is_one_entry_with_its_rows_and_deltas(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    path = tmp_path / "p.duckdb"
    settings = Settings(db=path, redis_url=redis_server.url)
    with serve(create_app(settings, Config(sources=[]))) as base:
        with httpx.Client(base_url=base, timeout=10) as http:
            seqs = [_push(http, i) for i in range(40)]
            wait_for(lambda: _seqs(redis_server.url) == seqs)
            health = http.get("/health").json()
            metrics = _metrics(http)
    assert health["status"] == "healthy" and health["publisher"]["connected"] is True
    assert metrics["omnimetrics_redis_connected"] == 1
    assert metrics["omnimetrics_redis_entries_total"] == len(seqs)
    assert metrics["omnimetrics_redis_published_seq"] == seqs[-1]
    assert metrics["omnimetrics_redis_unpublished_seqs"] == 0
    assert metrics['omnimetrics_job_failing{job="publish"}'] == 0
    assert health["publisher"]["published_seq"] == seqs[-1]
    client = redis.Redis.from_url(redis_server.url)
    epoch = client.get(EPOCH)
    client.close()
    assert epoch is not None and len(epoch) > 8
    _same(_entries(redis_server.url), _stored(path))
    deltas = [r.delta for _, b in _entries(redis_server.url) for r in b.rows]
    assert (
        None in deltas
        and 0 < sum(d for d in deltas if d)
        and all(d is None or d >= 0 for d in deltas)
    )


def test_publishing_waits_out_redis_down_paused_and_restarted_empty(tmp_path: Path) -> None:
    path = tmp_path / "p.duckdb"
    redis_server = RedisServer(tmp_path)  # not started yet
    settings = Settings(db=path, redis_url=redis_server.url)
    try:
        with serve(create_app(settings, Config(sources=[]))) as base:
            with httpx.Client(base_url=base, timeout=10) as http:
                # Down: pushes go on; `/health` says what is wrong.
                seqs = [_push(http, i) for i in range(10)]
                health = wait_for(
                    lambda: (h := http.get("/health").json())["status"] == "degraded" and h
                )
                assert any("Redis" in reason for reason in health["reasons"]), health["reasons"]
                assert health["publisher"]["connected"] is False
                down = wait_for(lambda: (m := _metrics(http))[
                    "omnimetrics_redis_unpublished_seqs"] == seqs[-1] and m)  # fmt: skip
                assert down["omnimetrics_redis_connected"] == 0
                assert down['omnimetrics_job_failing{job="publish"}'] == 1
                # Up: everything the store has is published, once, in order.
                redis_server.start()
                wait_for(lambda: _seqs(redis_server.url) == seqs, timeout=20)
                wait_for(lambda: http.get("/health").json()["status"] == "healthy")
                # Paused (a hung Redis): pushes go on; then all of them arrive.
                redis_server.pause()
                seqs += [_push(http, i) for i in range(10, 20)]
                # Until the publisher has given up waiting (its timeout) and says so.
                wait_for(lambda: http.get("/health").json()["publisher"]["connected"] is False,
                         timeout=20)  # fmt: skip
                seqs += [_push(http, i) for i in range(20, 22)]
                redis_server.resume()
                wait_for(lambda: _seqs(redis_server.url) == seqs, timeout=30)
                # Restarted without its data: published again from the store.
                redis_server.stop()
                seqs += [_push(http, i) for i in range(22, 25)]
                redis_server.start()
                wait_for(lambda: _seqs(redis_server.url) == seqs, timeout=20)
                seqs += [_push(http, i) for i in range(25, 30)]
                wait_for(lambda: _seqs(redis_server.url) == seqs)
                # Restarted empty between two batches (the publisher's connection idle):
                # noticed at the next write, not written into as if nothing happened.
                redis_server.stop()
                redis_server.start()
                seqs += [_push(http, i) for i in range(30, 33)]
                wait_for(lambda: _seqs(redis_server.url) == seqs)
        _same(_entries(redis_server.url), _stored(path))
    finally:
        redis_server.stop()


def test_a_stream_back_from_an_older_snapshot_gets_what_it_lacks_before_the_next_batch(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A Redis back from an older snapshot holds the stream without its newest entries
    (here: the stream key restored from a dump taken earlier, as a restart from an older
    RDB file would leave it), and the publisher's connection never broke, so no reconnect
    tells it: its next append sees that the top is not its own, and it publishes what is
    missing before going on. Entries deleted by hand (XDEL) cannot be added again (Redis
    refuses ids it has had): the publisher goes on after them rather than stopping."""
    path = tmp_path / "p.duckdb"
    settings = Settings(db=path, redis_url=redis_server.url)
    with serve(create_app(settings, Config(sources=[]))) as base:
        with httpx.Client(base_url=base, timeout=10) as http:
            client = redis.Redis.from_url(redis_server.url)
            try:
                seqs = [_push(http, i) for i in range(4)]
                wait_for(lambda: _seqs(redis_server.url) == seqs)
                snapshot = client.dump(STREAM)
                seqs += [_push(http, i) for i in range(4, 6)]
                wait_for(lambda: _seqs(redis_server.url) == seqs)
                client.restore(STREAM, 0, snapshot, replace=True)
                assert _seqs(redis_server.url) == seqs[:4]
                seqs += [_push(http, i) for i in range(6, 8)]
                wait_for(lambda: _seqs(redis_server.url) == seqs)
                _same(_entries(redis_server.url), _stored(path))
                assert client.xdel(STREAM, f"{seqs[-1]}-0") == 1
                seqs += [_push(http, i) for i in range(8, 10)]
                wait_for(lambda: _seqs(redis_server.url) == seqs[:-3] + seqs[-2:])
                assert http.get("/health").json()["publisher"]["connected"] is True
            finally:
                client.close()


def test_a_redis_restarted_empty_while_no_batch_comes_gets_everything_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """No append tells the publisher (there is nothing to publish), and its client may
    reconnect unseen (redis-py 8.2 does): its heartbeat notices the epoch key gone, and the
    epoch, the settings (under a version never written before: a counter would start again
    at a value a gateway has seen), the heartbeat and the stream are written again."""
    path = tmp_path / "p.duckdb"
    settings = Settings(db=path, redis_url=redis_server.url)
    with serve(create_app(settings, Config(sources=[]))) as base:
        with httpx.Client(base_url=base, timeout=10) as http:
            seqs = [_push(http, i) for i in range(3)]
            wait_for(lambda: _seqs(redis_server.url) == seqs)
            before = wait_for(lambda: _read(redis_server.url, lambda c: c.get(VERSION)))
            redis_server.stop()
            # Changed while Redis is away: written once more when it is back, the first
            # settings write into that Redis, as the one `before` was into the last.
            response = http.put("/settings", params={"tenant_id": "acme"},
                                json={"max_events_per_minute": 600})  # fmt: skip
            assert response.status_code == 200, response.text
            redis_server.start()
            wait_for(lambda: _seqs(redis_server.url) == seqs)
            # The settings and the heartbeat follow the stream's last append (a beat).
            epoch, writer, version = wait_for(
                lambda: (
                    all(keys := _read(redis_server.url, lambda c: c.mget(EPOCH, WRITER, VERSION)))
                    and keys
                )
            )
            assert version != before  # not the value a gateway last read
            acme = _read(redis_server.url, lambda c: c.hget(TENANTS, "acme"))
            assert b"600" in (acme or b"")
            wait_for(lambda: http.get("/health").json()["publisher"]["connected"] is True)
    _same(_entries(redis_server.url), _stored(path))


def _read(url: str, read: Callable[[redis.Redis], Any]) -> Any:
    client = redis.Redis.from_url(url)
    try:
        return read(client)
    finally:
        client.close()


def test_a_restarted_writer_publishes_what_the_stream_lacks_and_at_most_maxlen(
    tmp_path: Path,
) -> None:
    with RedisServer(tmp_path, **{"stream-node-max-entries": "2"}) as redis_server:
        _restarts(tmp_path, redis_server)


def _restarts(tmp_path: Path, redis_server: RedisServer) -> None:
    path = tmp_path / "p.duckdb"
    plain = Settings(db=path)
    with serve(create_app(plain, Config(sources=[]))) as base:  # no Redis: nothing published
        with httpx.Client(base_url=base, timeout=10) as http:
            seqs = [_push(http, i) for i in range(12)]
    assert _seqs(redis_server.url) == []
    # Started with Redis: the store's last `maxlen` batches, then every new one.
    settings = Settings(db=path, redis_url=redis_server.url, redis_maxlen=5)
    with serve(create_app(settings, Config(sources=[]))) as base:
        with httpx.Client(base_url=base, timeout=10) as http:
            wait_for(lambda: _seqs(redis_server.url) == seqs[-5:])
            seqs += [_push(http, i) for i in range(12, 30)]
            wait_for(lambda: _seqs(redis_server.url)[-1:] == seqs[-1:])
    kept = _seqs(redis_server.url)
    assert kept == seqs[-len(kept) :] and 5 <= len(kept) <= 7  # trimmed (approximately)
    # Started again on the same database: what the stream has is not published again.
    before = redis.Redis.from_url(redis_server.url).xinfo_stream(STREAM)["entries-added"]
    with serve(create_app(settings, Config(sources=[]))) as base:
        with httpx.Client(base_url=base, timeout=10) as http:
            seqs.append(_push(http, 13))
            wait_for(lambda: _seqs(redis_server.url)[-1:] == seqs[-1:])
            assert http.get("/health").json()["publisher"]["entries"] == 1
    after = redis.Redis.from_url(redis_server.url).xinfo_stream(STREAM)["entries-added"]
    assert after == before + 1
    # Another database (a new epoch): its batches replace the stream's.
    other = Settings(db=tmp_path / "other.duckdb", redis_url=redis_server.url)
    with serve(create_app(other, Config(sources=[]))) as base:
        with httpx.Client(base_url=base, timeout=10) as http:
            fresh = [_push(http, i) for i in range(3)]
            wait_for(lambda: _seqs(redis_server.url) == fresh)
    _same(_entries(redis_server.url), _stored(tmp_path / "other.duckdb"))
