"""schemathesis against the app's own OpenAPI schema: no route answers 5xx, whatever the
schema allows (and a bounded number of examples per route, to keep the suite fast)."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from tests.helpers import serve


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    path: Path = tmp_path_factory.mktemp("openapi") / "o.duckdb"
    with serve(create_app(Settings(db=path), Config(sources=[]))) as base:
        for value in (1, 5, 3):  # some data, with a restart, for the read routes to chew on
            metrics = {"metrics.total_tokens_saved": value}
            body = {"source": "c", "kind": "counter", "tool_id": "t", "session_id": "s",
                    "metrics": metrics}  # fmt: skip
            assert httpx.post(f"{base}/ingest", json=body).status_code == 202
        loaded = schemathesis.openapi.from_url(f"{base}/openapi.json")
        # An SSE stream never ends: the stream tests cover it.
        yield loaded.exclude(path="/stream/metrics")


def test_no_route_answers_5xx(api_schema: Any) -> None:
    checked = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def no_5xx(case: Any) -> None:
            response = case.call(timeout=30)
            assert response.status_code < 500, (
                case.method, case.formatted_path, response.text[:300])  # fmt: skip

        no_5xx()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert len(checked) >= 15, checked  # every route of the schema was exercised
