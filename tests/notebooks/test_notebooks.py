"""The analyst notebooks, executed (nbclient) against data written by a running service."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from nbclient import NotebookClient

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from query import connect
from tests.helpers import serve, wait_for

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
T0 = datetime(2026, 11, 17, tzinfo=UTC)


def event(
    ts: datetime, source: str, kind: str, metrics: dict[str, float], **kw: Any
) -> dict[str, Any]:
    return {"source": source, "kind": kind, "ts": ts.isoformat(), "metrics": metrics, **kw}


def history() -> list[dict[str, Any]]:
    events = []
    for tool, rate in (("claude-code", 900), ("cursor", 400)):
        total = 0.0
        for hour in range(72):
            total = 50.0 if (tool == "claude-code" and hour == 30) else total + rate
            events.append(event(T0 + timedelta(hours=hour), "compression", "counter",
                                {"metrics.total_tokens_saved": total}, tool_id=tool))  # fmt: skip
    start = T0 + timedelta(days=3)
    embeddings = 0.0
    for minute in range(60):
        embeddings = 7.0 if minute == 30 else embeddings + 120
        since = minute - 30
        rate = 0.82 if since < 0 else min(0.8, 0.1 + 0.07 * since)
        ts = start + timedelta(minutes=minute)
        events.append(event(ts, "embeddings", "counter",
                            {"mlx_metrics.total_embeddings": embeddings}))  # fmt: skip
        events.append(event(ts, "embeddings", "gauge", {"mlx_metrics.cache_hit_rate": rate}))
    return events


@pytest.fixture(scope="module")
def db_written_by_a_service(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("notebooks") / "nb.duckdb"
    settings = Settings(db=path, export_interval_seconds=0.5)
    events = history()
    with serve(create_app(settings, Config(sources=[]))) as base:
        response = httpx.post(f"{base}/ingest", json={"events": events}, timeout=30)
        assert response.status_code == 202
        rows = sum(len(e["metrics"]) for e in events)
        wait_for(lambda: connect(path).sql("SELECT count(*) FROM samples").fetchall()[0][0] == rows)
    return path


def run(name: str, db: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("OMNIMETRICS_DB", str(db))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # Jupyter's inline backend draws
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs committed"
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS.parent)}}).execute()  # fmt: skip
    return nb


def outputs(nb: nbformat.NotebookNode) -> tuple[list[str], int]:
    texts, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                texts.append(out["text"])
            images += "image/png" in out.get("data", {})
    return texts, images


@pytest.mark.parametrize(
    ("name", "reading"),
    [
        ("tokens_saved_per_tool_per_day", ["claude-code saved the most tokens", "never negative"]),
        ("cache_hit_rate_around_restarts",
         ["1 restart(s): the hit rate averaged 82% in the 10 minutes before"]),
    ],
)  # fmt: skip
def test_notebook_draws_its_chart_and_reads_it(
    db_written_by_a_service: Path, monkeypatch: pytest.MonkeyPatch, name: str, reading: list[str]
) -> None:
    texts, images = outputs(run(name, db_written_by_a_service, monkeypatch))
    assert images == 1
    assert all(phrase in texts[-1] for phrase in reading), texts[-1]
