"""Random series through the real /api/v1/increase in every format equal the delta rule
applied by hand, with rollups refreshing underneath and tools arriving late."""

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings
from tests.helpers import serve
from tests.query.test_increase import read_table

T0 = datetime(2026, 11, 1, tzinfo=UTC)
_tenants = itertools.count()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("props") / "p.duckdb"
    settings = Settings(db=path, rollup_interval_seconds=0.1, export_interval_seconds=50)
    with serve(create_app(settings, Config(sources=[]))) as url:
        yield url


POINT = st.tuples(
    st.sampled_from(["a", "b", "c"]),  # tool
    st.integers(0, 3 * 24 * 60),  # minute of the sample
    st.integers(0, 10_000),  # counter value: drops are restarts
)


def expected(points: list[tuple[str, int, int]], lo: datetime, hi: datetime, step: int) -> dict:  # type: ignore[type-arg]
    out: dict[tuple[int, str], float] = {}
    for tool in {p[0] for p in points}:
        series = sorted((m, i, v) for i, (t, m, v) in enumerate(points) if t == tool)
        prev = None
        for minute, _, value in series:
            ts = T0 + timedelta(minutes=minute)
            if prev is not None and lo <= ts < hi:
                delta = value - prev if value >= prev else value
                key = (int(ts.timestamp()) // step, tool)
                out[key] = out.get(key, 0.0) + delta
            prev = value
    return out


SLOW_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]  # one server for all


@settings(max_examples=40, deadline=None, suppress_health_check=SLOW_OK)
@given(
    first=st.lists(POINT, min_size=1, max_size=40),
    late=st.lists(POINT, max_size=10),  # a later request, often into hours already rolled up
    window=st.tuples(st.integers(-120, 2 * 24 * 60), st.integers(60, 4 * 24 * 60)),
    step=st.sampled_from(["30m", "1h", "2h", "1d"]),
    fmt=st.sampled_from(["json", "csv", "arrow", "parquet"]),
)
def test_increase_in_every_format_equals_the_delta_rule(
    base: str,
    first: list[tuple[str, int, int]],
    late: list[tuple[str, int, int]],
    window: tuple[int, int],
    step: str,
    fmt: str,
) -> None:
    tenant = f"p{next(_tenants)}"
    for points in (first, late):
        if points:
            events = [{"source": "s", "kind": "counter", "tenant_id": tenant, "tool_id": tool,
                       "ts": (T0 + timedelta(minutes=m)).isoformat(), "metrics": {"m": v}}
                      for tool, m, v in points]  # fmt: skip
            assert httpx.post(f"{base}/ingest", json={"events": events}).status_code == 202
    lo = T0 + timedelta(minutes=window[0])
    hi = lo + timedelta(minutes=window[1])
    params = {"metric": "m", "tenant_id": tenant, "step": step, "group_by": "tool_id",
              "from": lo.isoformat(), "to": hi.isoformat(), "format": fmt}  # fmt: skip
    response = httpx.get(f"{base}/api/v1/increase", params=params)
    assert response.status_code == 200, response.text
    rows = response.json()["buckets"] if fmt == "json" else read_table(response)
    seconds = {"30m": 1800, "1h": 3600, "2h": 7200, "1d": 86400}[step]
    got: dict[tuple[int, str], float] = {}
    for row in rows:
        t = row["t"]
        stamp = datetime.fromisoformat(t.replace("Z", "+00:00")) if isinstance(t, str) else t
        got[(int(stamp.timestamp()) // seconds, row["tool_id"])] = row["value"]
    want = expected(first + late, lo, hi, seconds)
    for key, value in want.items():
        assert abs(got.get(key, 0.0) - value) < 1e-6, (key, got.get(key), value)
    assert all(abs(v) < 1e-9 for k, v in got.items() if k not in want)
