"""`/api/v1/increase` through the real server: reset-aware, aligned, gap-filled, validated."""

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from tests.helpers import serve

T = "2026-11-20T10:{:02d}:00Z"


def push(base: str, minute: int, value: float, **fields: Any) -> None:
    body = {"source": "compression", "kind": "counter", "ts": T.format(minute),
            "metrics": {"metrics.total_tokens_saved": value}, **fields}  # fmt: skip
    assert httpx.post(f"{base}/ingest", json=body).status_code == 202


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    path = tmp_path / "inc.duckdb"
    with serve(create_app(Settings(db=path), Config(sources=[]))) as base:
        # The foundation's scenario: 1000, 1010, a failed tick (no sample), 1015, 5, 12.
        for minute, value in [(0, 1000), (1, 1010), (3, 1015), (4, 5), (5, 12)]:
            push(base, minute, value, tool_id="claude-code")
        push(base, 2, 50, tool_id="cursor")
        push(base, 7, 80, tool_id="cursor")
        push(base, 6, 0.5, kind="gauge", metrics={"metrics.cache_hit_rate": 0.5})
        yield base, path


def increase(base: str, **params: str) -> httpx.Response:
    query = {"metric": "metrics.total_tokens_saved", "from": T.format(0), "to": T.format(10)}
    query.update(params)
    return httpx.get(f"{base}/api/v1/increase", params=query)


def test_restart_scenario_increases_by_27(served: tuple[str, Path]) -> None:
    base, _ = served
    body = increase(base, tool_id="claude-code", step="1h").json()
    assert body["total"] == 27
    assert body["buckets"] == [{"t": "2026-11-20T10:00:00.000Z", "value": 27}]
    assert (body["metric"], body["step"]) == ("metrics.total_tokens_saved", "1h")


def test_window_starting_mid_series_looks_back_for_its_first_delta(
    served: tuple[str, Path],
) -> None:
    base, _ = served
    assert increase(base, tool_id="claude-code", **{"from": T.format(1)}).json()["total"] == 27
    assert increase(base, tool_id="claude-code", **{"from": T.format(3)}).json()["total"] == 17


def test_buckets_are_aligned_and_gap_filled(served: tuple[str, Path]) -> None:
    base, _ = served
    window = {"from": "2026-11-20T10:01:30Z", "to": "2026-11-20T10:06:00Z"}
    body = increase(base, tool_id="claude-code", step="2m", **window).json()
    assert body["buckets"] == [
        {"t": "2026-11-20T10:00:00.000Z", "value": 0},  # aligned to 10:00; 10:01 is before `from`
        {"t": "2026-11-20T10:02:00.000Z", "value": 5},
        {"t": "2026-11-20T10:04:00.000Z", "value": 12},
    ]
    # The sample at 10:01 is before `from`, so only what falls inside the window counts.
    assert body["total"] == 17


def test_group_by_tool(served: tuple[str, Path]) -> None:
    base, _ = served
    body = increase(base, step="5m", group_by="tool_id").json()
    assert body["buckets"] == [
        {"t": "2026-11-20T10:00:00.000Z", "tool_id": "claude-code", "value": 20},
        {"t": "2026-11-20T10:00:00.000Z", "tool_id": "cursor", "value": 0},
        {"t": "2026-11-20T10:05:00.000Z", "tool_id": "claude-code", "value": 7},
        {"t": "2026-11-20T10:05:00.000Z", "tool_id": "cursor", "value": 30},
    ]
    assert body["total"] == 57


def test_gauges_are_never_summed(served: tuple[str, Path]) -> None:
    base, _ = served
    body = increase(base, metric="metrics.cache_hit_rate").json()
    assert body["total"] == 0


def test_increase_agrees_with_the_view(served: tuple[str, Path]) -> None:
    base, _ = served
    for start, end in [(0, 10), (1, 6), (2, 3), (4, 9)]:
        got = increase(base, step="1m", **{"from": T.format(start), "to": T.format(end)})
        everything = {"metric": "metrics.total_tokens_saved", "from": T.format(0),
                      "to": T.format(10)}  # fmt: skip
        series = httpx.get(f"{base}/api/v1/series", params=everything)
        samples = series.json()["samples"]
        expected = 0.0
        last: dict[str | None, float] = {}
        for s in samples:  # the delta rule, by hand, over the raw samples
            prev = last.get(s["tool_id"])
            last[s["tool_id"]] = s["value"]
            if prev is None:
                continue
            delta = s["value"] - prev if s["value"] >= prev else s["value"]
            if T.format(start) <= s["ts"].replace(".000Z", "Z") < T.format(end):
                expected += delta
        assert got.json()["total"] == expected, (start, end)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"from": T.format(5), "to": T.format(1)}, "before"),
        ({"step": "7x"}, "step"),
        ({"step": "0m"}, "step"),
        ({"step": "1.5h"}, "step"),
        ({"step": "1s", "from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"},
         "at most 10000"),
        ({"group_by": "tool_id,colour"}, "colour"),
        ({"group_by": "tool_id,tool_id"}, "repeated"),
        ({"group_by": "tool_id; DROP TABLE samples"}, "unknown label"),
        ({"metric": ""}, "metric"),
        ({"colour": "red"}, "colour"),
        ({"format": "xml"}, "format"),
    ],
)  # fmt: skip
def test_bad_parameters_are_422_saying_what_is_wrong(
    served: tuple[str, Path], params: dict[str, str], needle: str
) -> None:
    base, _ = served
    response = increase(base, **params)
    assert response.status_code == 422
    assert needle in response.json()["error"]


def test_missing_metric_is_422(served: tuple[str, Path]) -> None:
    base, _ = served
    response = httpx.get(f"{base}/api/v1/increase")
    assert response.status_code == 422 and "metric" in response.json()["error"]


def test_injection_in_filters_matches_nothing(served: tuple[str, Path]) -> None:
    base, _ = served
    for evil in ["x' OR '1'='1", "'; DROP TABLE samples; --"]:
        assert increase(base, tool_id=evil).json()["total"] == 0
        assert increase(base, metric=evil).json()["total"] == 0
    assert increase(base, tool_id="claude-code").json()["total"] == 27


def read_table(response: httpx.Response) -> list[dict[str, Any]]:
    kind = response.headers["content-type"]
    if kind.startswith("text/csv"):
        return pa_csv.read_csv(io.BytesIO(response.content)).to_pylist()
    if kind == "application/vnd.apache.arrow.stream":
        return pa.ipc.open_stream(response.content).read_all().to_pylist()
    assert kind == "application/vnd.apache.parquet", kind
    return pq.read_table(io.BytesIO(response.content)).to_pylist()


@pytest.mark.parametrize("fmt", ["csv", "arrow", "parquet"])
def test_restart_scenario_is_27_in_every_format(served: tuple[str, Path], fmt: str) -> None:
    base, _ = served
    by_param = read_table(increase(base, tool_id="claude-code", step="1m", format=fmt))
    media = {"csv": "text/csv", "arrow": "application/vnd.apache.arrow.stream",
             "parquet": "application/vnd.apache.parquet"}[fmt]  # fmt: skip
    by_accept = read_table(
        httpx.get(
            f"{base}/api/v1/increase",
            headers={"Accept": media},
            params={
                "metric": "metrics.total_tokens_saved",
                "tool_id": "claude-code",
                "step": "1m",
                "from": T.format(0),
                "to": T.format(10),
            },
        )  # fmt: skip
    )
    for rows in (by_param, by_accept):
        assert sum(row["value"] for row in rows) == 27
        assert len(rows) == 10  # one row per bucket, gap-filled
        assert list(rows[0]) == ["t", "value"]


def test_group_by_columns_in_tabular_formats(served: tuple[str, Path]) -> None:
    base, _ = served
    rows = read_table(increase(base, step="5m", group_by="tool_id", format="parquet"))
    assert [(r["tool_id"], r["value"]) for r in rows] == [
        ("claude-code", 20), ("cursor", 0), ("claude-code", 7), ("cursor", 30)]  # fmt: skip
    assert rows[0]["t"] == datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
