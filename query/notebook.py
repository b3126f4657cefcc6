"""`query.connect()`: the analysts' DuckDB connection, with the service's views and macros.

It reads the Parquet mirror the service keeps beside its database, so it works in another
process while `omnimetrics serve` writes (data at most one export interval old) and never
blocks or breaks the service, not even its restart. When the service is stopped, it first
brings the mirror up to date from the database file, opened read-only and closed at once.
"""

import atexit
import contextlib
import threading
import weakref
from pathlib import Path

import duckdb

from query.mirror import export_new, listed_files, mirror_dir
from schemas.migrations import MIGRATIONS, VIEW_MIGRATIONS
from schemas.rows import SAMPLE_SCHEMA

_EMPTY = """
CREATE OR REPLACE VIEW samples AS
SELECT * FROM (SELECT NULL::BIGINT AS seq, NULL::BIGINT AS batch, NULL::TIMESTAMPTZ AS ts,
    NULL::VARCHAR AS tenant_id, NULL::VARCHAR AS tool_id, NULL::VARCHAR AS session_id,
    NULL::VARCHAR AS source, NULL::VARCHAR AS metric, NULL::VARCHAR AS kind,
    NULL::DOUBLE AS value) WHERE false
"""
_COLUMNS = ", ".join(["seq", "batch", *SAMPLE_SCHEMA.names])
FOLLOW_SECONDS = 1.0  # how often an open connection looks for a new export


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


class _Follower:
    """Keeps a connection's `samples` view on the files `meta.json` lists: the view names
    them (a fixed list, so every query reads one consistent set), and a daemon thread
    replaces it when the service's next export lists others. It stops once the
    connection is closed or gone."""

    def __init__(self, con: duckdb.DuckDBPyConnection, mirror: Path) -> None:
        self._con = weakref.ref(con)
        self._cur = con.cursor()  # its own connection to the same database, for the thread
        self._mirror = mirror
        self._stamp: tuple[int, int, int] | None = (-1, -1, -1)  # not looked yet
        self.refresh(con)

    def refresh(self, con: duckdb.DuckDBPyConnection) -> None:
        stamp = _stamp(self._mirror / "meta.json")
        if stamp == self._stamp:
            return
        files = listed_files(self._mirror)
        if files:
            names = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
            con.execute(f"CREATE OR REPLACE VIEW samples AS SELECT {_COLUMNS} "
                        f"FROM read_parquet([{names}])")  # fmt: skip
        else:  # nothing exported yet
            con.execute(_EMPTY)
        self._stamp = stamp

    def follow(self) -> None:
        thread = threading.Thread(target=self._run, name="omnimetrics-mirror-follower",
                                  daemon=True)  # fmt: skip
        _FOLLOWING.add(thread)
        thread.start()

    def _run(self) -> None:
        try:
            while self._con() is not None and not _EXITING.wait(FOLLOW_SECONDS):
                try:
                    self.refresh(self._cur)
                except duckdb.ConnectionException:
                    return  # closed
                except (duckdb.Error, OSError, ValueError):
                    continue  # a half-seen export: the next look gets it whole
        finally:
            with contextlib.suppress(duckdb.Error):
                self._cur.close()
            _FOLLOWING.discard(threading.current_thread())


# A daemon thread still inside DuckDB when the interpreter finalizes aborts the process
# ("FATAL: exception not rethrown"): at exit, the followers stop and are waited for.
_EXITING = threading.Event()
_FOLLOWING: set[threading.Thread] = set()


@atexit.register
def _stop_following() -> None:
    _EXITING.set()
    for thread in list(_FOLLOWING):
        thread.join(timeout=5)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def connect(db_path: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection whose `samples`, `sample_deltas` and
    `sample_deltas_between(from, to)` are the service's, over the same data; it follows
    the service's exports while it stays open."""
    path = Path(db_path)
    _refresh_if_stopped(path)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    follower = _Follower(con, mirror_dir(path))
    for migration in MIGRATIONS:
        if migration.name in VIEW_MIGRATIONS:  # the views and macros, over this `samples`
            con.execute(migration.sql)
    follower.follow()
    return con
