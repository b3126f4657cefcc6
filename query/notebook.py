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

from query.mirror import export_new, listed_files, listed_series, mirror_dir
from schemas.views import EMPTY_TABLES, SERIES_VIEWS

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
        series = listed_series(self._mirror)
        if files and series is not None:
            names = ", ".join(_literal(f) for f in files)
            keys = _literal(series)
            con.execute(
                f"CREATE OR REPLACE VIEW points AS SELECT * FROM read_parquet([{names}]);"
                f"CREATE OR REPLACE VIEW series_keys AS SELECT * FROM read_parquet({keys})"
            )
        else:  # nothing exported yet
            con.execute(EMPTY_TABLES)
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


def _literal(path: Path) -> str:
    """A file path as an SQL string literal (read_parquet takes no parameters here)."""
    return "'" + str(path).replace("'", "''") + "'"


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def connect(db_path: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection whose `samples`, `sample_deltas`, `series` and
    `sample_deltas_between(from, to)` are the service's, over the same data; it follows
    the service's exports while it stays open."""
    path = Path(db_path)
    _refresh_if_stopped(path)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    follower = _Follower(con, mirror_dir(path))
    con.execute(SERIES_VIEWS)  # the service's own views and macros, over these tables
    follower.follow()
    return con
