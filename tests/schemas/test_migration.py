"""A database written by the release before the series model (0.1.0: long `samples`,
labels inside metric strings, string-keyed rollups, a long-form mirror) upgrades in place
at startup, and every answer it gave before is the same after.

The fixture was written by that release (tests/fixtures/make_release_0_1_0.py, run at
commit fc44867) with its answers to the same queries recorded beside it."""

import json
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from query import connect
from schemas.db import Database
from schemas.labels import text_form
from tests.helpers import serve

FIXTURE = Path(__file__).parent.parent / "fixtures" / "release-0.1.0.tar.gz"


def as_released(value: Any) -> Any:
    """An answer as 0.1.0 wrote it: a labeled series' `metric` was its text form, and
    there was no `labels` field."""
    if isinstance(value, list):
        return [as_released(v) for v in value]
    if isinstance(value, dict):
        out = {k: as_released(v) for k, v in value.items() if k != "labels"}
        if "labels" in value and "metric" in value:
            out["metric"] = text_form(value["metric"], tuple(value["labels"].items()))
        return out
    return value


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("release")
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(folder, filter="data")
    answers = json.loads((folder / "answers.json").read_text())
    return folder / "release.duckdb", answers


def test_every_answer_of_the_release_is_the_same_after_the_upgrade(
    upgraded: tuple[Path, dict[str, Any]],
) -> None:
    db, answers = upgraded
    with serve(create_app(Settings(db=db), Config(sources=[]))) as base:
        for recorded in answers["http"]:
            response = httpx.get(base + recorded["route"], params=recorded["params"])
            assert response.status_code == 200, (recorded["route"], response.text)
            assert as_released(response.json()) == recorded["body"], recorded["route"]
        # The labeled series are series now: filtered and grouped by their labels.
        by_code = httpx.get(f"{base}/api/v1/increase", params={
            "metric": "http_requests_total", "labels": '{"method":"get"}', "step": "1d",
            "group_by": "labels.code", "from": "2026-11-29T00:00:00Z", "to": "2027-01-01T00:00:00Z",
        }).json()  # fmt: skip
        totals = {}
        for bucket in by_code["buckets"]:
            totals[bucket["labels.code"]] = totals.get(bucket["labels.code"], 0) + bucket["value"]
        assert totals == {"200": 170, "500": 5}


def test_the_notebook_reads_the_same_after_the_upgrade(
    upgraded: tuple[Path, dict[str, Any]],
) -> None:
    db, answers = upgraded
    Database(db).close()  # the service's start migrates (and is done by the test above)
    con = connect(db)
    try:
        rows = con.sql(
            "SELECT tenant_id, tool_id, session_id, source, metric, labels, kind, count(*), "
            "sum(delta) FROM sample_deltas GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        got = [
            [t, tool, session, source, text_form(metric, tuple(labels.items())), kind, n, total]
            for t, tool, session, source, metric, labels, kind, n, total in rows
        ]
        assert sorted(got, key=str) == sorted(answers["notebook"]["deltas"], key=str)
        assert [list(r) for r in con.sql("SELECT count(*), max(seq) FROM samples").fetchall()] == (
            answers["notebook"]["count"]
        )
        (series, distinct) = con.sql(
            "SELECT count(*), count(DISTINCT (tenant_id, tool_id, session_id, source, name)) "
            "FROM series"
        ).fetchall()[0]
        assert series == distinct == len(answers["notebook"]["deltas"])
    finally:
        con.close()
