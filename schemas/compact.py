"""`omnimetrics compact --db PATH`: rewrite a stopped database to its live size.

DuckDB reuses the blocks that deletes free, but never gives them back to the file system
(DESIGN.md "Retention"): after a large one-off delete the file stays at its peak. A copy
of everything live (`COPY FROM DATABASE`: tables, views, macros) into a new file, checked
table by table, then moved over the old one, is as small as the data. The copy keeps the
database's epoch (it is a row of `meta`), so clients' cursors stay valid.
"""

import contextlib
import os
from pathlib import Path
from typing import NamedTuple

import duckdb


class CompactError(Exception):
    """The database could not be compacted; nothing was changed. The message is a line."""


class Compacted(NamedTuple):
    before: int  # bytes, the file and its WAL
    after: int


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _size(path: Path) -> int:
    wal = Path(f"{path}.wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def compact(path: Path) -> Compacted:
    """Rewrite the database at `path` (the service stopped: DuckDB's lock says if not)."""
    if not path.is_file():
        raise CompactError(f"no database at {path}")
    before = _size(path)
    fresh = path.with_name(f"{path.name}.compacting")
    for stale in (fresh, Path(f"{fresh}.wal")):
        stale.unlink(missing_ok=True)  # a compaction that was interrupted
    try:
        con = duckdb.connect(str(path))
    except duckdb.Error as exc:
        raise CompactError(f"cannot open database {path}: {_line(exc)} (stop the service "
                           "first)") from None  # fmt: skip
    try:
        con.execute("CHECKPOINT")  # the WAL into the file: the copy reads one place
        (source,) = con.execute("SELECT current_database()").fetchall()[0]
        con.execute("ATTACH $path AS compacted", {"path": str(fresh)})
        con.execute(f"COPY FROM DATABASE {_quoted(source)} TO compacted")
        _check_copied(con, source)
        con.execute("DETACH compacted")
    except (duckdb.Error, CompactError) as exc:
        with contextlib.suppress(duckdb.Error):
            con.execute("DETACH compacted")
        con.close()
        fresh.unlink(missing_ok=True)
        Path(f"{fresh}.wal").unlink(missing_ok=True)
        raise CompactError(f"cannot compact {path}: {_line(exc)}; it is unchanged") from None
    con.close()
    os.replace(fresh, path)  # atomic: the old file or the new one, never half of either
    Path(f"{path}.wal").unlink(missing_ok=True)  # the checkpoint emptied it
    Path(f"{fresh}.wal").unlink(missing_ok=True)
    _sync_dir(path.parent)
    return Compacted(before, _size(path))


def _check_copied(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """Every table of the source has the same rows in the copy (counts, table by table)."""
    tables = con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = $db",
        {"db": source},
    ).fetchall()
    for schema, table in tables:  # names from the catalog, quoted
        name = f"{_quoted(schema)}.{_quoted(table)}"
        (a,) = con.execute(f"SELECT count(*) FROM {_quoted(source)}.{name}").fetchall()[0]
        (b,) = con.execute(f"SELECT count(*) FROM compacted.{name}").fetchall()[0]
        if a != b:
            raise CompactError(f"table {schema}.{table}: {b} rows copied of {a}")


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
