"""`query.connect()` in another process, while a real `omnimetrics serve` writes."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from query import connect
from tests.helpers import free_port, wait_for

NOTEBOOK = """
import sys, json
from query import connect
con = connect(sys.argv[1])
total = con.sql(
    "SELECT coalesce(sum(delta), 0) FROM sample_deltas_between("
    "TIMESTAMPTZ '2026-11-20 00:00:00+00', TIMESTAMPTZ '2026-11-21 00:00:00+00') "
    "WHERE metric = 'metrics.total_tokens_saved'").fetchall()[0][0]
rows = con.sql("SELECT count(*) FROM samples").fetchall()[0][0]
print(json.dumps({"total": total, "rows": rows}), flush=True)
if len(sys.argv) > 2:  # stay open until told, still able to query
    sys.stdin.readline()
    print(con.sql("SELECT count(*) FROM samples").fetchall()[0][0], flush=True)
"""
SCENARIO = [(0, 1000), (1, 1010), (3, 1015), (4, 5), (5, 12)]


class Service:
    def __init__(self, tmp: Path) -> None:
        self.db = tmp / "nb.duckdb"
        self.config = tmp / "none.toml"
        self.config.write_text("sources = []\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = ""

    def start(self) -> None:
        port = free_port()
        env = {**os.environ, "OMNIMETRICS_EXPORT_INTERVAL_SECONDS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omnimetrics.cli", "serve", "--port", str(port),
             "--db", str(self.db), "--config", str(self.config)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "service exited"
            try:
                return httpx.get(f"{self.base}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30, interval=0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    def push(self, minute: int, value: float) -> None:
        body = {"source": "compression", "kind": "counter", "ts": f"2026-11-20T10:{minute:02d}:00Z",
                "metrics": {"metrics.total_tokens_saved": value}}  # fmt: skip
        assert httpx.post(f"{self.base}/ingest", json=body).status_code == 202


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path)
    svc.start()
    yield svc
    svc.stop()


def ask(db: Path) -> dict[str, float]:
    """Run the notebook once in its own process and return its answer."""
    done = subprocess.run([sys.executable, "-c", NOTEBOOK, str(db)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer: dict[str, float] = json.loads(done.stdout)
    return answer


def test_notebook_reads_while_the_service_writes_and_survives_its_restart(
    service: Service,
) -> None:
    for minute, value in SCENARIO:
        service.push(minute, value)
    # Fresh within the export interval (1 s here; at most 60 s by contract).
    wait_for(lambda: ask(service.db)["rows"] == len(SCENARIO), timeout=15)
    open_notebook = subprocess.Popen(
        [sys.executable, "-c", NOTEBOOK, str(service.db), "stay"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert open_notebook.stdin is not None and open_notebook.stdout is not None
    assert json.loads(open_notebook.stdout.readline()) == {"total": 27, "rows": 5}
    # The service keeps ingesting while the notebook holds its connection...
    started = time.monotonic()
    service.push(6, 20)
    assert time.monotonic() - started < 1.0
    # ...and restarts while it is open.
    service.stop()
    service.start()
    service.push(7, 25)
    out, _ = open_notebook.communicate("\n", timeout=30)
    assert open_notebook.returncode == 0 and int(out) >= 5  # it still answers
    wait_for(lambda: ask(service.db)["total"] == 27 + 8 + 5, timeout=15)


def test_an_open_connection_sees_new_exports(service: Service) -> None:
    service.push(0, 1000)
    wait_for(lambda: ask(service.db)["rows"] == 1, timeout=15)
    con = connect(service.db)
    assert con.sql("SELECT count(*) FROM samples").fetchall() == [(1,)]
    service.push(1, 1010)
    wait_for(lambda: con.sql("SELECT count(*) FROM samples").fetchall() == [(2,)], timeout=15)
    con.close()


def test_connect_after_the_service_stopped_sees_everything_and_holds_nothing(
    service: Service,
) -> None:
    for minute, value in SCENARIO:
        service.push(minute, value)
    service.stop()
    con = connect(service.db)
    assert con.sql("SELECT count(*) FROM samples").fetchall() == [(5,)]
    increase = con.sql(
        "SELECT sum(delta) FROM sample_deltas WHERE metric = 'metrics.total_tokens_saved'"
    ).fetchall()
    assert increase == [(27.0,)]
    service.start()  # the file is not held by the notebook
    service.push(6, 20)
    con.close()


def test_connect_on_a_path_with_no_data_gives_empty_views(tmp_path: Path) -> None:
    con = connect(tmp_path / "nothing.duckdb")
    assert con.sql("SELECT count(*) FROM sample_deltas").fetchall() == [(0,)]


def run_export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "omnimetrics.cli", "export", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_export_writes_parquet_partitioned_by_day(service: Service, tmp_path: Path) -> None:
    for minute, value in SCENARIO:
        service.push(minute, value)
    body = {"source": "compression", "kind": "counter", "ts": "2026-11-21T03:00:00Z",
            "metrics": {"metrics.total_tokens_saved": 30}}  # fmt: skip
    assert httpx.post(f"{service.base}/ingest", json=body).status_code == 202
    wait_for(lambda: ask(service.db)["rows"] == 6, timeout=15)
    out = tmp_path / "export"
    args = ["--db", str(service.db), "--out", str(out)]
    running = run_export("--from", "2026-11-20T00:00:00Z", "--to", "2026-11-22T00:00:00Z", *args)
    assert running.returncode == 0, running.stderr
    assert running.stdout.strip() == f"exported 6 samples to {out}"
    days = sorted(p.name for p in out.iterdir())
    assert days == ["day=2026-11-20", "day=2026-11-21"]
    table = pq.read_table(out / "day=2026-11-20")
    assert table.num_rows == 5 and sorted(table.column("value").to_pylist())[-1] == 1015
    service.stop()
    later = tmp_path / "later"
    stopped = run_export("--from", "2026-11-21T00:00:00Z", "--to", "2026-11-22T00:00:00Z",
                         "--db", str(service.db), "--out", str(later))  # fmt: skip
    assert stopped.returncode == 0 and "exported 1 samples" in stopped.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--from", "2026-11-21T00:00:00Z", "--to", "2026-11-20T00:00:00Z"], "before"),
        (["--from", "yesterday", "--to", "2026-11-20T00:00:00Z"], "RFC 3339"),
        (["--from", "2026-11-20T00:00:00", "--to", "2026-11-21T00:00:00Z"], "zone"),
        (["--from", "2026-11-20T00:00:00Z"], "--to"),
    ],
)
def test_bad_export_arguments_exit_2_with_one_line(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    done = run_export(*args, "--out", str(tmp_path / "x"), "--db", str(tmp_path / "d.duckdb"))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and needle in done.stderr
