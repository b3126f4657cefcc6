"""Whatever arrives, the parsers answer with their result or their documented error:
the JSON flattener, the Prometheus text path, stream cursors, and /ingest bodies."""

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ingest.parse import ParseError, parse_json
from ingest.prometheus import parse_prometheus
from ingest.push import InvalidBody, parse_events
from ingest.sources import default_kind
from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from schemas.labels import METRIC_NAME, canonical, from_json, to_json
from stream.cursor import BadCursor, parse_cursor
from tests.helpers import serve

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),  # fmt: skip
    max_leaves=30,
)


def _json_bytes(value: object) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return repr(value).encode()


BODIES = st.one_of(st.binary(max_size=300), JSON.map(_json_bytes),
                   st.text(max_size=300).map(str.encode))  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(body=BODIES)
@example(body=b'{"": 0}')  # a number with no name is not a sample
def test_the_json_path_returns_finite_samples_or_parse_error(body: bytes) -> None:
    try:
        parsed = parse_json(body, default_kind)
    except ParseError as exc:
        assert str(exc)
        return
    for sample in parsed:
        assert isinstance(sample.metric, str) and sample.metric
        assert sample.kind in ("counter", "gauge", "delta")
        assert math.isfinite(sample.value)


NAME = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True)
LINE = st.one_of(
    st.builds(lambda n, t: f"# TYPE {n} {t}", NAME,
              st.sampled_from(["counter", "gauge", "histogram", "summary", "untyped", "x"])),
    st.builds(lambda n, v: f"{n} {v}", NAME, st.floats(allow_nan=True) | st.integers()),
    st.builds(lambda n, k, lv, v: f'{n}{{{k}="{lv}"}} {v}', NAME, NAME, st.text(max_size=8),
              st.floats()),
    st.text(max_size=40),
)  # fmt: skip
PROMETHEUS = st.one_of(st.lists(LINE, max_size=12).map(lambda ls: "\n".join(ls).encode()),
                       st.binary(max_size=200))  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(body=PROMETHEUS)
def test_the_prometheus_path_returns_canonical_samples_or_parse_error(body: bytes) -> None:
    try:
        parsed = parse_prometheus(body)
    except ParseError as exc:
        assert str(exc)
        return
    for sample in parsed:
        assert sample.kind in ("counter", "gauge", "untyped") and not math.isnan(sample.value)
        assert METRIC_NAME.fullmatch(sample.metric)
        assert sample.labels == to_json(canonical(from_json(sample.labels)))
        assert sample.metric not in ("up", "scrape_duration_seconds")


EPOCH = "3f2b7c1e-aaaa-bbbb-cccc-0123456789ab"
CURSORS = st.one_of(
    st.text(max_size=60),
    st.builds(lambda e, s: f"{e}:{s}", st.sampled_from([EPOCH, "other", ""]),
              st.integers(-5, 10**20).map(str) | st.text(max_size=6)),
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(text=CURSORS, head=st.integers(0, 10**6))
def test_cursor_parsing_returns_a_seq_in_range_or_bad_cursor(text: str, head: int) -> None:
    try:
        seq = parse_cursor(text, EPOCH, head)
    except BadCursor as exc:
        assert str(exc)
        return
    assert 0 <= seq <= head and text == f"{EPOCH}:{text.rpartition(':')[2]}"


EVENT = st.fixed_dictionaries(
    {"source": st.text(max_size=5), "metrics": JSON},
    optional={"kind": st.sampled_from(["counter", "gauge", "delta", "other"]),
              "tenant_id": st.text(max_size=8), "ts": st.text(max_size=30) | st.integers(),
              "event_id": JSON, "extra": JSON},
)  # fmt: skip
BATCHES = st.lists(EVENT, max_size=4).map(lambda e: _json_bytes({"events": e}))
INGEST = st.one_of(BODIES, EVENT.map(_json_bytes), BATCHES)


@settings(max_examples=400, deadline=None)
@given(body=INGEST)
def test_ingest_bodies_parse_or_fail_as_documented(body: bytes) -> None:
    try:
        events = parse_events(body)
    except (InvalidBody, ValidationError):
        return
    assert events and all(math.isfinite(v) for e in events for v in e.metrics.values())


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path: Path = tmp_path_factory.mktemp("props") / "in.duckdb"
    with serve(create_app(Settings(db=path), Config(sources=[]))) as url:
        yield url


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=INGEST)
def test_the_ingest_route_answers_202_413_or_422_never_5xx(base: str, body: bytes) -> None:
    response = httpx.post(f"{base}/ingest", content=body,
                          headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code in (202, 413, 422), response.text
    if response.status_code != 202:
        assert response.json()["error"]
