from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.db import Database
from tests.helpers import Upstream


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
