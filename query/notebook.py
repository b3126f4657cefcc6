"""`query.connect()`: the analysts' DuckDB connection, with the service's views and macros.

It reads the Parquet mirror the service keeps beside its database, so it works in another
process while `omnimetrics serve` writes (data at most one export interval old) and never
blocks or breaks the service, not even its restart. When the service is stopped, it first
brings the mirror up to date from the database file, opened read-only and closed at once.
"""

from pathlib import Path

import duckdb

from query.mirror import export_new, mirror_dir
from schemas.migrations import MIGRATIONS, VIEW_MIGRATIONS
from schemas.rows import SAMPLE_SCHEMA

_EMPTY = """
CREATE TABLE samples (seq BIGINT, batch BIGINT, ts TIMESTAMPTZ, tenant_id VARCHAR,
    tool_id VARCHAR, session_id VARCHAR, source VARCHAR, metric VARCHAR, kind VARCHAR,
    value DOUBLE)
"""


def _refresh_if_stopped(db_path: Path) -> None:
    if not db_path.exists():
        return
    try:
        con = duckdb.connect(str(db_path), read_only=True)
    except (duckdb.IOException, duckdb.ConnectionException):
        # The service holds the file (another process: a lock; this one: an open
        # connection). Its own exports keep the mirror fresh.
        return
    try:
        (epoch,) = con.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchall()[0]
        export_new(con, mirror_dir(db_path), epoch)
    finally:
        con.close()


def connect(db_path: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection whose `samples`, `sample_deltas` and
    `sample_deltas_between(from, to)` are the service's, over the same data."""
    path = Path(db_path)
    _refresh_if_stopped(path)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    folder = mirror_dir(path) / "samples"
    if any(folder.glob("day=*/*.parquet")):
        # A glob, expanded at every query: an open connection keeps seeing new exports.
        # Files appear whole (written under a temporary name, then renamed).
        pattern = str(folder / "day=*" / "*.parquet").replace("'", "''")
        columns = ", ".join(["seq", "batch", *SAMPLE_SCHEMA.names])
        con.execute(f"CREATE VIEW samples AS SELECT {columns} FROM read_parquet('{pattern}')")
    else:
        con.execute(_EMPTY)  # nothing exported yet: reconnect once the service has written
    for migration in MIGRATIONS:
        if migration.name in VIEW_MIGRATIONS:  # the views and macros, over this `samples`
            con.execute(migration.sql)
    return con
