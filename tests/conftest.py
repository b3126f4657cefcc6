import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from schemas.db import Database
from tests.helpers import Upstream

# Locally, property tests explore new random cases on every run (keep any failure as an
# @example). In CI (CI=true) they replay a fixed sequence, so a run is reproducible.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Many tests push samples at fixed times (2026-11-20...) and read them back; under the
# default 30-day retention they would be refused (or deleted) once those dates are a month
# old. Every service these tests start keeps a century, unless a test says otherwise (the
# retention tests pass their windows to Settings, which wins over the environment).
for _name in ("RAW", "MINUTE", "ROLLUP"):
    os.environ.setdefault(f"OMNIMETRICS_RETENTION_{_name}", "36500d")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "test.duckdb")
    yield database
    database.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
