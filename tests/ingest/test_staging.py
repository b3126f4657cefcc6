"""What the writer stages and how it goes into the database."""

from pathlib import Path

import pytest

from ingest.staging import Appenders
from schemas.db import Database


def test_an_appender_that_failed_keeps_nothing_for_the_next_append(tmp_path: Path) -> None:
    """A flush that fails stores none of its rows, and none of them later (the write that
    follows on the same appender stores exactly its own)."""
    db = Database(tmp_path / "a.duckdb")
    try:
        con = db.cursor()
        appenders = Appenders(con)
        appenders.append("ingest_events", [("local", "a", 1)])
        with pytest.raises(Exception, match="(?i)duplicate key"):
            appenders.append("ingest_events", [("local", "b", 2), ("local", "a", 2)])
        appenders.append("ingest_events", [("local", "c", 3)])
        keys = con.execute("SELECT event_id, batch FROM ingest_events ORDER BY 1").fetchall()
        assert keys == [("a", 1), ("c", 3)]
        with pytest.raises(ValueError, match="not a table"):
            appenders.append("tenant_settings", [])
    finally:
        db.close()
