from pathlib import Path

from schemas.db import Database, apply_migrations
from schemas.migrations import MIGRATIONS


def test_migrations_apply_once_and_epoch_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "m.duckdb"
    first = Database(path)
    epoch = first.epoch
    applied = first.read_sync(
        lambda cur: cur.execute("SELECT name FROM schema_migrations").fetchall()
    )
    assert [name for (name,) in applied] == [m.name for m in MIGRATIONS]
    first.close()
    again = Database(path)
    assert again.epoch == epoch
    assert again.read_sync(apply_migrations) == []
    again.close()


def test_each_database_gets_its_own_epoch(tmp_path: Path) -> None:
    a, b = Database(tmp_path / "a.duckdb"), Database(tmp_path / "b.duckdb")
    assert a.epoch != b.epoch
    a.close()
    b.close()
