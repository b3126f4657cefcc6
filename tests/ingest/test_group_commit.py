"""Group commit: concurrent pushes share transactions, yet each request is answered only
after its own events are committed, all or nothing, and stored once by its event ids."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest

from ingest.staging import SMALL_GROUP_ROWS
from ingest.writer import Commit, Events, Writer
from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from schemas.db import Database
from schemas.labels import NO_LABELS, to_json
from schemas.rows import SampleRow
from schemas.signals import AppendSignal
from tests.helpers import serve

pytestmark = pytest.mark.anyio

PUSHERS = 50
REQUESTS = 4  # per pusher, each sent twice (a retry with the same event ids)


def body(pusher: int, request: int) -> dict[str, object]:
    return {"events": [
        {"source": f"p{pusher}", "kind": "counter", "event_id": f"p{pusher}-r{request}-e{e}",
         "metrics": {"total": float(request * 10 + e)}, "ts": f"2026-11-20T10:{request:02d}:0{e}Z"}
        for e in range(3)
    ]}  # fmt: skip


async def test_concurrent_pushes_are_committed_together_each_once_and_all_or_nothing(
    tmp_path: Path,
) -> None:
    settings = Settings(db=tmp_path / "g.duckdb", max_series_per_tenant=PUSHERS + 5)
    statuses: list[int] = []
    late: list[str] = []
    with serve(create_app(settings, Config(sources=[]))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30,
                                     limits=httpx.Limits(max_connections=64)) as http:  # fmt: skip

            async def pusher(i: int) -> None:
                for r in range(REQUESTS):
                    for _ in range(2):
                        response = await http.post("/ingest", json=body(i, r))
                        statuses.append(response.status_code)
                        # Answered only after the commit: its events are readable now.
                        seen = await http.get("/api/v1/series", params={
                            "source": f"p{i}", "from": "2026-11-20T10:00:00Z",
                            "to": "2026-11-20T11:00:00Z"})  # fmt: skip
                        values = {s["value"] for s in seen.json()["samples"]}
                        if not {float(r * 10 + e) for e in range(3)} <= values:
                            late.append(f"p{i} r{r}")

            async def invalid() -> None:
                await anyio.sleep(0.05)  # among the others, not before them
                too_many = {"source": "wide", "kind": "gauge",
                            "metrics": {f"m{i}": 1.0 for i in range(20)}}  # fmt: skip
                refused = await http.post("/ingest", json=too_many)
                assert refused.status_code == 422 and "series" in refused.json()["error"]
                malformed = await http.post("/ingest", json={"source": "x", "metrics": {}})
                assert malformed.status_code == 422

            async with anyio.create_task_group() as group:
                for i in range(PUSHERS):
                    group.start_soon(pusher, i)
                group.start_soon(invalid)
            health = (await http.get("/health")).json()
            wide = await http.get("/api/v1/latest", params={"source": "wide"})
            stored = await http.get("/api/v1/series", params={
                "from": "2026-11-20T10:00:00Z", "to": "2026-11-20T11:00:00Z",
                "limit": "100000"})  # fmt: skip
    assert statuses == [202] * (PUSHERS * REQUESTS * 2)
    assert late == []
    assert wide.json()["series"] == []  # nothing of the refused request
    samples = stored.json()["samples"]
    keys = [(s["source"], s["ts"]) for s in samples]
    assert len(keys) == len(set(keys)) == PUSHERS * REQUESTS * 3  # every event exactly once
    # Fewer transactions than requests: some were committed together.
    assert health["writer"]["transactions"] < PUSHERS * REQUESTS * 2 + 1  # + the refused


async def test_small_groups_store_what_the_column_path_stores(tmp_path: Path) -> None:
    """Small groups of pushes of known series resolve per row (`stage_known`); the same
    requests through the column path alone give the same batches, seqs and rows."""
    ts = datetime(2026, 11, 20, 10, tzinfo=UTC)

    def request(i: int) -> Events:
        labels = to_json((("le", str(i % 3)),)) if i % 2 else NO_LABELS
        out = []
        for e in range(1 + i % 3):
            key = ("local", f"r{i}-e{e}") if i % 4 == 0 else None
            rows = [
                SampleRow(ts + timedelta(seconds=(7 * i + e + k) % 5), "local",
                          "t" if i % 3 else None, None, f"s{i % 4}", f"m{k}",
                          "gauge" if k else "counter", float(i + k), labels)
                for k in range(1 + e % 2)
            ]  # fmt: skip
            out.append((key, rows))
        return out

    async def stored(small_group_rows: int) -> tuple[list[object], list[tuple[object, ...]]]:
        db = Database(tmp_path / f"small-{small_group_rows}.duckdb")
        writer = Writer(db, AppendSignal(), small_group_rows=small_group_rows)
        await writer.start()
        try:
            for i in range(12):  # every series once, through the column path
                await writer.append_events(request(i))
            commits = []
            for i in range(12, 60):  # one request at a time: the same groups for both
                commits.append(await writer.append_events(request(i % 12 + 12 * (i % 2))))
            commits.append(await writer.append_events(request(0)))  # its event ids are stored
            sequential = db.read_sync(lambda c: c.execute(
                "SELECT seq, batch, ts, metric, labels, tool_id, source, kind, value "
                "FROM samples ORDER BY seq").fetchall())  # fmt: skip
            # Concurrent requests: groups of several, as they happen to form.
            together: list[Commit | None] = [None] * 24
            async with anyio.create_task_group() as tasks:
                for i in range(24):

                    async def one(i: int = i) -> None:
                        together[i] = await writer.append_events(request(100 + i))

                    tasks.start_soon(one)  # fmt: skip
            assert writer.transactions < 12 + 49 + 24  # some were committed together
            per_request = []
            for commit in together:
                assert commit is not None
                per_request.append(db.read_sync(lambda c, b=commit.batch: c.execute(
                    "SELECT ts, metric, labels, tool_id, source, kind, value, seq FROM samples "
                    "WHERE batch = $b ORDER BY seq", {"b": b}).fetchall()))  # fmt: skip
            seqs = db.read_sync(lambda c: c.execute(
                "SELECT seq, batch FROM samples ORDER BY seq").fetchall())  # fmt: skip
        finally:
            await writer.close()
            db.close()
        assert [s for s, _ in seqs] == list(range(1, len(seqs) + 1))
        batches = sorted({b for _, b in seqs})
        assert batches == list(range(1, len(batches) + 1))  # one per request with rows
        for commit, rows in zip(together, per_request, strict=True):
            assert commit is not None and [r[-1] for r in rows] == list(
                range(commit.first_seq, commit.last_seq + 1)
            )
        return commits, sequential, [[r[:-1] for r in rows] for rows in per_request]

    per_row, columns = await stored(SMALL_GROUP_ROWS), await stored(0)
    assert per_row == columns
    assert per_row[0][-1] is None  # the repeated event ids: nothing new to write


async def test_pushes_handed_over_just_before_close_are_committed_not_left_waiting(
    tmp_path: Path,
) -> None:
    """A group's drain starts after the loop's current round (so the requests it is still
    reading join it): pushes handed over in the round that closes the writer are committed
    by `close`, never left waiting on a closed connection."""
    db = Database(tmp_path / "c.duckdb")
    writer = Writer(db, AppendSignal())
    await writer.start()
    at = datetime(2026, 11, 20, 10, tzinfo=UTC)
    events: list[Events] = [
        [(None, [SampleRow(at, "local", None, None, f"s{i}", "m", "counter", 1.0)])]
        for i in range(3)
    ]
    commits: list[Commit | None] = []

    async def push(one: Events) -> None:
        commits.append(await writer.append_events(one))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for one in events:
                tg.start_soon(push, one)
            await anyio.lowlevel.checkpoint()  # each push handed over, its drain not yet
            await writer.close()
    rows = db.read_sync(lambda c: c.execute("SELECT count(*) FROM points").fetchall())
    db.close()
    assert len(commits) == 3 and all(c is not None for c in commits)
    assert rows == [(3,)]
