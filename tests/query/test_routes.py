"""`/api/v1/series` and `/api/v1/latest` over pushed data, through the real server."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from schemas.times import rfc3339
from tests.helpers import serve
from tests.query.test_increase import read_table


def push(base: str, **fields: Any) -> None:
    body = {"source": "compression", "kind": "counter", **fields}
    assert httpx.post(f"{base}/ingest", json=body).status_code == 202


@pytest.fixture
def base(tmp_path: Path) -> Iterator[str]:
    with serve(create_app(Settings(db=tmp_path / "q.duckdb"), Config(sources=[]))) as url:
        push(url, tool_id="a", metrics={"total": 1}, ts="2026-11-20T10:00:00Z")
        push(url, tool_id="a", metrics={"total": 5}, ts="2026-11-20T10:01:00Z")
        push(url, tool_id="b", metrics={"total": 7}, ts="2026-11-20T10:00:30Z")
        push(url, tenant_id="acme", metrics={"total": 9}, ts="2026-11-20T10:00:30Z")
        push(url, source="embeddings", kind="gauge", metrics={"hit_rate": 0.4})
        yield url


WINDOW = {"from": "2026-11-20T00:00:00Z", "to": "2026-11-21T00:00:00Z"}


def get(base: str, route: str, **params: str) -> httpx.Response:
    return httpx.get(f"{base}/api/v1/{route}", params=params)


def test_series_filters_really_filter(base: str) -> None:
    samples = get(base, "series", tool_id="a", **WINDOW).json()["samples"]
    assert [(s["tool_id"], s["value"]) for s in samples] == [("a", 1.0), ("a", 5.0)]
    acme = get(base, "series", tenant_id="acme", **WINDOW).json()["samples"]
    assert [s["value"] for s in acme] == [9.0]
    limited = get(base, "series", limit="2", **WINDOW).json()["samples"]
    assert [s["seq"] for s in limited] == [1, 2]


def test_series_defaults_to_the_last_24_hours(base: str) -> None:
    samples = get(base, "series").json()["samples"]
    assert [s["metric"] for s in samples] == ["hit_rate"]


def test_latest_gives_one_row_per_series(base: str) -> None:
    series = get(base, "latest", source="compression").json()["series"]
    got = {(s["tenant_id"], s["tool_id"]): s["value"] for s in series}
    assert got == {("local", "a"): 5.0, ("local", "b"): 7.0, ("acme", None): 9.0}
    gauge = get(base, "latest", metric="hit_rate").json()["series"]
    assert [(s["kind"], s["value"]) for s in gauge] == [("gauge", 0.4)]


@pytest.mark.parametrize(
    ("route", "params", "needle"),
    [
        ("series", {"bogus": "1"}, "bogus"),
        ("latest", {"form": "x"}, "form"),
        ("series", {"from": "2026-11-20T10:00:00Z", "to": "2026-11-20T09:00:00Z"}, "before"),
        ("series", {"from": "last tuesday"}, "from"),
        ("series", {"limit": "0"}, "limit"),
        ("series", {"limit": "100001"}, "limit"),
        ("latest", {"tenant_id": "a b"}, "tenant_id"),
    ],
)
def test_bad_parameters_are_422_with_a_message(
    base: str, route: str, params: dict[str, str], needle: str
) -> None:
    response = get(base, route, **params)
    assert response.status_code == 422
    assert needle in response.json()["error"]


@pytest.mark.parametrize(
    "evil",
    ["a' OR '1'='1", "a'; DROP TABLE samples; --", "%", "*", "\\", 'a{b="1"} OR 1'],
)
def test_injection_strings_match_nothing_and_change_nothing(base: str, evil: str) -> None:
    for name in ("metric", "source", "tool_id", "session_id"):
        response = get(base, "series", **{name: evil}, **WINDOW)
        if name == "metric" and "{" in evil:  # not a series' text form: a clear error
            assert response.status_code == 422 and "metric" in response.json()["error"]
            continue
        assert response.json()["samples"] == []
        assert get(base, "latest", **{name: evil}).json()["series"] == []
    evil_labels = json.dumps({"code": evil})
    assert get(base, "series", labels=evil_labels, **WINDOW).json()["samples"] == []
    assert len(get(base, "series", **WINDOW).json()["samples"]) == 4


@pytest.mark.parametrize("name", ["metric", "source", "tool_id", "session_id"])
def test_control_characters_in_a_name_are_refused_with_the_field(base: str, name: str) -> None:
    response = get(base, "series", **{name: "a\x00b"}, **WINDOW)
    assert response.status_code == 422
    assert name in response.json()["error"]


@pytest.mark.parametrize("fmt", ["csv", "arrow", "parquet"])
def test_series_and_latest_in_tabular_formats_match_json(base: str, fmt: str) -> None:
    for route, key in (("series", "samples"), ("latest", "series")):
        params = {**WINDOW} if route == "series" else {}
        as_json = get(base, route, **params).json()[key]
        response = get(base, route, format=fmt, **params)
        if fmt == "csv":  # written as RFC 3339 text
            assert as_json[0]["ts"] in response.text
        rows = read_table(response)
        assert len(rows) == len(as_json)
        for row, expected in zip(rows, as_json, strict=True):
            assert row["seq"] == expected["seq"] and row["value"] == expected["value"]
            assert row["metric"] == expected["metric"] and row["kind"] == expected["kind"]
            ts = row["ts"] if isinstance(row["ts"], str) else rfc3339(row["ts"])
            assert ts == expected["ts"]
