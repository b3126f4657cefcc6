"""Labels everywhere they are read, and the values and limits that keep the store sound
(CONTRACT.md "Series and labels"), through the real server."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from tests.helpers import serve

WINDOW = {"from": "2026-11-20T00:00:00Z", "to": "2026-11-21T00:00:00Z"}


def push(base: str, **fields: Any) -> httpx.Response:
    body = {"source": "api", "kind": "counter", **fields}
    return httpx.post(f"{base}/ingest", json=body)


@pytest.fixture
def base(tmp_path: Path) -> Iterator[str]:
    settings = Settings(db=tmp_path / "l.duckdb", max_series_per_tenant=8)
    with serve(create_app(settings, Config(sources=[]))) as url:
        for minute, (ok, bad) in enumerate([(1, 0), (4, 1), (2, 1), (6, 3)]):  # a restart at 2
            ts = f"2026-11-20T10:0{minute}:00Z"
            for code, value in (("200", ok), ("500", bad)):
                labels = {"code": code, "method": "get", "empty": ""}
                r = push(url, metrics={"http_requests_total": value}, labels=labels, ts=ts)
                assert r.status_code == 202, r.text
        yield url


def get(base: str, route: str, **params: str) -> httpx.Response:
    return httpx.get(f"{base}/api/v1/{route}", params=params)


def test_answers_carry_the_bare_metric_and_canonical_labels(base: str) -> None:
    samples = get(base, "series", **WINDOW).json()["samples"]
    assert {(s["metric"], json.dumps(s["labels"])) for s in samples} == {
        ("http_requests_total", '{"code": "200", "method": "get"}'),
        ("http_requests_total", '{"code": "500", "method": "get"}'),
    }
    latest = get(base, "latest", labels='{"code":"500"}').json()["series"]
    assert [(s["labels"]["code"], s["value"]) for s in latest] == [("500", 3.0)]
    csv = get(base, "latest", format="csv").text
    assert '"{""code"":""200"",""method"":""get""}"' in csv


def test_a_label_filter_and_group_by_a_label_give_reset_aware_increases(base: str) -> None:
    params = {"metric": "http_requests_total", "step": "1d", **WINDOW}
    only_500 = get(base, "increase", labels='{"code":"500"}', **params).json()
    assert only_500["total"] == 3  # 0, +1, +0, +2
    grouped = get(base, "increase", group_by="labels.code,labels.method", **params).json()
    assert [(b["labels.code"], b["labels.method"], b["value"]) for b in grouped["buckets"]] == [
        ("200", "get", 9.0), ("500", "get", 3.0)]  # fmt: skip  # 200: +3, restart 2, +4
    missing = get(base, "increase", labels='{"code":"200","zone":""}', **params).json()
    assert missing["total"] == 9  # an empty value matches series without that label
    assert get(base, "increase", labels='{"zone":"eu"}', **params).json()["total"] == 0


@pytest.mark.parametrize(
    ("labels", "words"),
    [("[1]", "JSON object"), ('{"a":1}', "strings"), ('{"9a":"x"}', "label name"), ("{", "JSON")],
)
def test_a_bad_label_filter_is_a_422_naming_it(base: str, labels: str, words: str) -> None:
    response = get(base, "latest", labels=labels)
    assert response.status_code == 422
    assert "labels" in response.json()["error"] and words in response.json()["error"]


def test_group_by_an_unknown_label_is_a_422(base: str) -> None:
    response = get(base, "increase", metric="m", group_by="labels.9x", **WINDOW)
    assert response.status_code == 422 and "labels.NAME" in response.json()["error"]


def test_a_negative_counter_is_a_422_naming_the_metric(base: str) -> None:
    response = push(base, metrics={"ok": 1, "hits": -5})
    assert response.status_code == 422
    assert "metrics.hits" in response.json()["error"] and ">= 0" in response.json()["error"]
    assert push(base, kind="gauge", metrics={"temp": -5}).status_code == 202


def test_a_sum_that_overflows_is_plus_inf_never_null(base: str) -> None:
    for ts in ("10:01", "10:02"):  # two finite deltas whose sum is not
        response = push(base, source="big", kind="delta", metrics={"huge": 1e308},
                        ts=f"2026-11-20T{ts}:00Z")  # fmt: skip
        assert response.status_code == 202
    body = get(base, "increase", metric="huge", step="1d", **WINDOW).json()
    assert body["buckets"][0]["value"] == "+Inf" and body["total"] == "+Inf"


@pytest.mark.parametrize("ts", [1763632800, "1763632800", "2026-11-20", "2026-11-20T10:00:00"])
def test_a_time_that_is_not_rfc3339_with_a_zone_is_a_422(base: str, ts: object) -> None:
    response = push(base, metrics={"x": 1}, ts=ts)
    assert response.status_code == 422 and "RFC 3339" in response.json()["error"]
    assert get(base, "series", **{"from": "1763632800"}).status_code == 422


def test_latest_takes_a_limit_and_says_when_it_cut(base: str) -> None:
    cut = get(base, "latest", limit="1")
    assert cut.json()["truncated"] is True and len(cut.json()["series"]) == 1
    assert cut.headers["X-Omnimetrics-Truncated"] == "true"
    whole = get(base, "latest", limit="2").json()
    assert "truncated" not in whole and len(whole["series"]) == 2
    assert get(base, "latest", limit="100001").status_code == 422


def test_a_push_over_the_series_limit_is_a_422_and_stores_nothing(base: str) -> None:
    before = len(get(base, "latest").json()["series"])
    response = push(base, metrics={f"m{i}": 1 for i in range(10)})
    assert response.status_code == 422
    assert "8 series" in response.json()["error"]
    assert "OMNIMETRICS_MAX_SERIES_PER_TENANT" in response.json()["error"]
    assert len(get(base, "latest").json()["series"]) == before
    assert push(base, metrics={"one_more": 1}).status_code == 202  # the limit, not a lock


def test_metric_names_up_to_1024_bytes_are_stored_and_found(base: str) -> None:
    name = "n" * 1024
    assert push(base, metrics={name: 1}).status_code == 202
    assert len(get(base, "latest", metric=name).json()["series"]) == 1
    assert push(base, metrics={name + "n": 1}).status_code == 422
    assert get(base, "latest", metric=name + "n").status_code == 422


def test_streams_take_labels_and_the_old_tags(base: str) -> None:
    params = {"tags": '{"code":"500"}', "since": _cursor(base, 0)}
    with httpx.stream("GET", f"{base}/stream/metrics", params=params) as sse:
        assert sse.status_code == 200
        data = _first_metrics(sse.iter_lines())
    assert data["labels"] == {"code": "500"}
    (key,) = data["data"]["api"]
    assert key == 'http_requests_total{code="500",method="get"}'
    assert data["deltas"] == {} or list(data["deltas"]["api"]) == [key]
    bad = httpx.get(f"{base}/stream/metrics", params={"labels": "[]"})
    assert bad.status_code == 422 and "labels" in bad.json()["error"]


def test_last_event_id_has_the_cursor_cap(base: str) -> None:
    response = httpx.get(f"{base}/stream/metrics", headers={"Last-Event-ID": "x" * 201})
    assert response.status_code == 422 and "Last-Event-ID" in response.json()["error"]


def _cursor(base: str, seq: int) -> str:
    epoch = httpx.get(f"{base}/api/v1/latest").headers["X-Omnimetrics-Cursor"].split(":")[0]
    return f"{epoch}:{seq}"


def _first_metrics(lines: Iterator[str]) -> dict[str, Any]:
    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "metrics":
            doc: dict[str, Any] = orjson.loads(line[6:])
            return doc
    raise AssertionError("no metrics event")
