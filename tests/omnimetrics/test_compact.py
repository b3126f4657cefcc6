"""`omnimetrics compact --db PATH`: a database whose rows were mostly deleted keeps its
size (DuckDB never shrinks a file by itself); compacting the stopped database rewrites it
to its live size with every answer, the epoch and the seq numbering unchanged."""

import random
from pathlib import Path
from typing import Any

import duckdb
import httpx

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from tests.helpers import serve
from tests.omnimetrics.test_cli import run_cli

EVENTS = 5_000


def push_many(base: str, rng: random.Random) -> None:
    events = [{"source": "bulk", "kind": "counter", "session_id": f"s{i % 50}",
               "metrics": {f"m{j}": rng.random() * 1e6 for j in range(20)}}
              for i in range(EVENTS)]  # fmt: skip
    response = httpx.post(f"{base}/ingest", json={"events": events}, timeout=60)
    assert response.status_code == 202, response.text


def answers(base: str) -> dict[str, Any]:
    def get(path: str, **params: Any) -> Any:
        response = httpx.get(f"{base}{path}", params=params, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    window = {"from": "2020-01-01T00:00:00Z", "to": "2040-01-01T00:00:00Z"}
    return {
        "latest": get("/api/v1/latest", source="bulk"),
        "series": get("/api/v1/series", source="bulk", metric="m0", limit=100_000, **window),
        "increase": get("/api/v1/increase", metric="m1", step="1d", group_by="session_id",
                        **window),
    }  # fmt: skip


def test_compact_shrinks_a_stopped_database_and_changes_no_answer(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    settings = Settings(db=db)
    with serve(create_app(settings, Config(sources=[]))) as base:
        rng = random.Random(7)  # values that do not compress away: a file of some size
        for _ in range(10):
            push_many(base, rng)
    con = duckdb.connect(str(db))
    (kept_from,) = con.execute("SELECT max(seq) - 2000 FROM points").fetchall()[0]
    con.execute("DELETE FROM points WHERE seq < $s", {"s": kept_from})  # most of it
    con.execute("CHECKPOINT")
    (epoch,) = con.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchall()[0]
    con.close()
    deleted_size = db.stat().st_size

    with serve(create_app(settings, Config(sources=[]))) as base:
        before = answers(base)
    assert len(before["series"]["samples"]) > 0

    locked = duckdb.connect(str(db))  # this process holds the file, as a running service does
    try:
        refused = run_cli("compact", "--db", str(db))
    finally:
        locked.close()
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "stop the service first" in refused.stderr and db.stat().st_size == deleted_size

    done = run_cli("compact", "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"compacted {db}: ")
    assert db.stat().st_size < deleted_size / 3
    assert not Path(f"{db}.compacting").exists()

    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchall()[0][0] == epoch
    (head,) = con.execute("SELECT max(seq) FROM points").fetchall()[0]
    con.close()
    with serve(create_app(settings, Config(sources=[]))) as base:
        assert answers(base) == before
        pushed = httpx.post(f"{base}/ingest", json={"source": "after", "kind": "gauge",
                                                    "metrics": {"x": 1}})  # fmt: skip
        assert pushed.json()["seq"] == head + 1  # numbering goes on where it was


def test_compact_without_a_database_is_one_line(tmp_path: Path) -> None:
    result = run_cli("compact", "--db", str(tmp_path / "missing.duckdb"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"omnimetrics: error: no database at {tmp_path}/missing.duckdb"
