"""Random series with restarts and late tools through the old service's routes equal the
delta rule by hand, with rollups refreshing underneath."""

import itertools
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from schemas.times import rfc3339, utcnow
from tests.helpers import serve

_tenants = itertools.count()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("legacy-props") / "p.duckdb"
    settings = Settings(db=path, rollup_interval_seconds=0.1, export_interval_seconds=50)
    with serve(create_app(settings, Config(sources=[]))) as url:
        yield url


POINT = st.tuples(
    st.sampled_from(["a", "b", "c"]),  # tool
    st.integers(1, 3 * 24 * 60),  # minutes before now
    st.integers(0, 10_000),  # counter value: drops are restarts
)
SLOW_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]  # one server for all


def expected(points: list[tuple[str, int, int]], hours: int) -> dict[str, float]:
    """Per tool: the reset-aware increase of the samples less than `hours` old."""
    out: dict[str, float] = {}
    for tool in {p[0] for p in points}:
        # Later minutes-ago are older; among equal times the later push comes later.
        series = sorted((-m, i, v) for i, (t, m, v) in enumerate(points) if t == tool)
        prev = None
        for neg_minutes, _, value in series:
            if prev is not None and -neg_minutes < hours * 60:
                out[tool] = out.get(tool, 0.0) + (value - prev if value >= prev else value)
            prev = value
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=SLOW_OK)
@given(
    first=st.lists(POINT, min_size=1, max_size=30),
    late=st.lists(POINT, max_size=8),  # a later request, often into hours already rolled up
    hours=st.sampled_from([1, 5, 24, 48]),
)
def test_old_routes_equal_the_delta_rule(
    base: str, first: list[tuple[str, int, int]], late: list[tuple[str, int, int]], hours: int
) -> None:
    tenant = f"p{next(_tenants)}"
    # Samples sit 30 s off the minute, so the window's edge (now - hours, a moment after
    # `anchor`) never falls on one: a sample is in it iff it is less than `hours` old.
    anchor = utcnow() - timedelta(seconds=30)
    for points in (first, late):
        if points:
            events = [{"source": "compression", "kind": "counter", "tenant_id": tenant,
                       "tool_id": tool, "ts": rfc3339(anchor - timedelta(minutes=m)),
                       "metrics": {"metrics.total_tokens_saved": v}}
                      for tool, m, v in points]  # fmt: skip
            assert httpx.post(f"{base}/ingest", json={"events": events}).status_code == 202
    want = expected(first + late, hours)
    params = {"tenant_id": tenant, "hours": hours}
    compare = httpx.get(f"{base}/metrics/compare", params={**params, "tool_ids": "a,b,c"}).json()
    for tool in "abc":
        assert compare[tool]["tokens_saved"] == pytest.approx(want.get(tool, 0.0)), tool
    total = httpx.get(f"{base}/metrics/aggregates", params=params).json()["total_tokens_saved"]
    assert total == pytest.approx(sum(want.values()))
    savings = httpx.get(f"{base}/metrics/token-savings", params=params).json()
    assert savings["total_saved"] == pytest.approx(sum(want.values()))
