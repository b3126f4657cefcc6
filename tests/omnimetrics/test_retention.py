"""Retention in the running service: 60 days pushed with backdated timestamps into a
service that keeps them, then the service started with the default windows (the job runs
at startup): raw rows older than 30 days are gone, day and hour answers are unchanged,
finer steps there get a 422 that says why, pushes before the cutoff are refused, a
tenant's `retention_days` shortens its own window, `/health` and `/metrics` show the
runs, and `compact` shrinks the stopped file."""

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
from prometheus_client.parser import text_string_to_metric_families

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from schemas.tenants import SettingsUpdate
from schemas.times import rfc3339
from tests.helpers import serve, wait_for
from tests.omnimetrics.test_cli import run_cli

DAYS = 60
SESSIONS = 5
METRICS = 20
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
FIRST = TODAY - timedelta(days=DAYS)
KEEP_ALL = {"retention_raw": "400d", "retention_minute": "400d", "retention_rollup": "400d"}
DEFAULTS = {"retention_raw": "30d", "retention_minute": "30d", "retention_rollup": "400d"}


def push_history(base: str, tenant: str, rng: random.Random) -> None:
    """Every 30 minutes for 60 days, per session: 20 counters (one restarts midway)."""
    totals = [[0.0] * METRICS for _ in range(SESSIONS)]
    events = []
    for tick in range(DAYS * 48):
        at = rfc3339(FIRST + tick * timedelta(minutes=30))
        for s in range(SESSIONS):
            for m in range(METRICS):
                totals[s][m] += rng.randrange(100)
            if tick == DAYS * 24 and s == 0:
                totals[s] = [1.0] * METRICS  # an upstream restart
            events.append({"source": "api", "kind": "counter", "tenant_id": tenant,
                           "session_id": f"s{s}", "ts": at,
                           "metrics": {f"m{m}": totals[s][m] for m in range(METRICS)}})  # fmt: skip
    for i in range(0, len(events), 5_000):
        response = httpx.post(f"{base}/ingest", json={"events": events[i : i + 5_000]}, timeout=60)
        assert response.status_code == 202, response.text


def increase(base: str, tenant: str, step: str, start: datetime, end: datetime) -> httpx.Response:
    params = {"metric": "m3", "tenant_id": tenant, "step": step, "group_by": "session_id",
              "from": rfc3339(start), "to": rfc3339(end)}  # fmt: skip
    return httpx.get(f"{base}/api/v1/increase", params=params, timeout=30)


def answers(base: str, tenant: str) -> dict[str, Any]:
    out = {}
    day45 = TODAY - timedelta(days=45)
    for name, step, start, end in (("days", "1d", FIRST, TODAY + timedelta(days=1)),
                                   ("hours", "1h", day45, day45 + timedelta(days=1))):  # fmt: skip
        response = increase(base, tenant, step, start, end)
        assert response.status_code == 200, response.text
        out[name] = response.json()["buckets"]
    return out


def raw_before(path: Path, tenant: str, cutoff: datetime) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        sql = "SELECT count(*) FROM samples WHERE tenant_id = $t AND ts < $c"
        (n,) = con.execute(sql, {"t": tenant, "c": cutoff}).fetchall()[0]
        return int(n)
    finally:
        con.close()


def test_retention_in_the_service(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    rng = random.Random(11)
    keep_all = Settings(db=db, rollup_interval_seconds=0.2, **KEEP_ALL)
    with serve(create_app(keep_all, Config(sources=[]))) as base:
        for tenant in ("acme", "brief"):
            push_history(base, tenant, rng)
        before = {tenant: answers(base, tenant) for tenant in ("acme", "brief")}

        def rollup_runs() -> int:
            runs: int = httpx.get(f"{base}/health").json()["jobs"]["rollups"]["runs"]
            return runs

        pushed = rollup_runs()  # the file holds the rollups of what was pushed
        wait_for(lambda: rollup_runs() >= pushed + 2)
    cutoff = TODAY - timedelta(days=30)
    assert raw_before(db, "acme", cutoff) == 30 * 48 * SESSIONS * METRICS
    full_size = db.stat().st_size

    # Tenant brief keeps raw samples 7 days; everyone else as the service: 30.
    config = Config(sources=[], tenants={"brief": SettingsUpdate(retention_days=7)})
    with serve(create_app(Settings(db=db, **DEFAULTS), config)) as base:
        health = wait_for(lambda: (h := httpx.get(f"{base}/health").json())["jobs"][
            "retention"]["runs"] >= 1 and h)  # fmt: skip
        assert health["status"] == "healthy", health
        # The job checkpointed after its deletes: the file (and WAL) has not grown.
        wal = Path(f"{db}.wal")
        assert db.stat().st_size + (wal.stat().st_size if wal.exists() else 0) <= full_size * 1.1
        kept = health["retention"]
        assert kept["raw_from"] == rfc3339(cutoff) and kept["rollups_from"] is not None
        assert kept["tenants_raw_from"] == {"brief": rfc3339(TODAY - timedelta(days=7))}
        per_day = 48 * SESSIONS * METRICS  # each series keeps one: SESSIONS * METRICS
        assert kept["deleted_points"] == (30 + 53) * per_day - 2 * SESSIONS * METRICS
        assert {t: answers(base, t) for t in ("acme", "brief")} == before
        # Finer steps over time whose raw samples are gone: a 422 that says what would do.
        day45 = TODAY - timedelta(days=45)
        refused = increase(base, "acme", "5m", day45, day45 + timedelta(hours=2))
        assert refused.status_code == 422
        assert "multiples of 3600 s" in refused.json()["error"], refused.text
        # Brief's last 30 days but one week: its 1 m rollups answer whole minutes there.
        day10 = TODAY - timedelta(days=10)
        assert increase(base, "brief", "5m", day10, day10 + timedelta(hours=2)).status_code == 200
        assert increase(base, "brief", "30s", day10, day10 + timedelta(hours=2)).status_code == 422
        # Pushes before a tenant's cutoff are refused whole, after it stored.
        old = {"source": "api", "kind": "counter", "tenant_id": "acme", "metrics": {"m0": 1},
               "ts": rfc3339(cutoff - timedelta(minutes=1))}  # fmt: skip
        response = httpx.post(
            f"{base}/ingest", json={"events": [{**old, "ts": rfc3339(TODAY)}, old]}
        )
        assert response.status_code == 422 and "keeps raw samples" in response.text
        response = httpx.post(f"{base}/ingest", json={**old, "tenant_id": "brief",
                                                      "ts": rfc3339(day10)})  # fmt: skip
        assert response.status_code == 422 and "'brief'" in response.text
        assert httpx.post(f"{base}/ingest", json={**old, "ts": rfc3339(cutoff)}).status_code == 202
        settings = httpx.get(f"{base}/settings", params={"tenant_id": "brief"}).json()
        assert settings["settings"]["retention_days"] == 7
        text = httpx.get(f"{base}/metrics").text
        runs = {s.labels["job"]: s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "omnimetrics_job_runs_total"}  # fmt: skip
        assert runs["retention"] >= 1
        # A tenant's new window is in force at once: the job runs again now, not in an hour.
        put = httpx.put(
            f"{base}/settings", params={"tenant_id": "acme"}, json={"retention_days": 3}
        )
        assert put.status_code == 200, put.text
        three_days = rfc3339(TODAY - timedelta(days=3))
        kept = wait_for(lambda: (r := httpx.get(f"{base}/health").json()["retention"])[
            "tenants_raw_from"].get("acme") == three_days and r)  # fmt: skip
        assert kept["tenants_raw_from"]["brief"] == rfc3339(TODAY - timedelta(days=7))
        acme_now = increase(base, "acme", "1d", FIRST, TODAY + timedelta(days=1))
        assert acme_now.json()["buckets"] == before["acme"]["days"]
    # Each series keeps its last raw sample before its cutoff, nothing older.
    # (acme's: one more, the series first pushed at the 30-day cutoff above)
    assert raw_before(db, "acme", TODAY - timedelta(days=3)) == SESSIONS * METRICS + 1
    assert raw_before(db, "brief", TODAY - timedelta(days=7)) == SESSIONS * METRICS

    done = run_cli("compact", "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert db.stat().st_size < full_size * 0.75, (db.stat().st_size, full_size)
    with serve(create_app(Settings(db=db, **DEFAULTS), config)) as base:
        assert {t: answers(base, t) for t in ("acme", "brief")} == before
