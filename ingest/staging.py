"""What the writer stages before a transaction: batches numbered and turned into the
rows of each table, and the statements that insert many batches at once."""

import contextlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.series import Resolved
from schemas.labels import NO_LABELS
from schemas.rows import SampleRow, ScrapeRow, to_arrow
from schemas.series_migration import SERIES_KEYS_SCHEMA

# Tables are constants: the only identifiers the writer ever puts into SQL. Arrow tables
# are inserted by position (`SELECT *`), so each is built in its table's column order.
_INSERT_SERIES = "INSERT INTO series_keys SELECT * FROM incoming"
_INSERT_POINTS = "INSERT INTO points SELECT * FROM incoming"
_INSERT_SCRAPES = "INSERT INTO scrapes SELECT * FROM incoming"
EXISTING_KEYS = """
SELECT k.tenant_id, k.event_id
FROM (SELECT unnest($tenants) AS tenant_id, unnest($ids) AS event_id) k
SEMI JOIN ingest_events e ON e.tenant_id = k.tenant_id AND e.event_id = k.event_id
"""

EventKey = tuple[str, str]  # (tenant_id, event_id)
PointRow = tuple[int, int, datetime, int, str, float]  # a `points` row, in column order
Events = Sequence[tuple[EventKey | None, Sequence[SampleRow]]]  # one push request, as rows


class Pushed(NamedTuple):
    """One push request as columns: its rows (SAMPLE_SCHEMA), each row's event (its
    position in the request), and each event's idempotency key."""

    table: pa.Table
    event: np.ndarray
    keys: Sequence[EventKey | None]


Request = Events | Pushed


def keys_in(request: Request) -> Sequence[EventKey | None]:
    return request.keys if isinstance(request, Pushed) else [key for key, _ in request]


def expired(
    request: Request, raw_from: int, tenants: Mapping[str, int]
) -> tuple[str, datetime, int] | None:
    """The first sample (tenant, ts, cutoff) of `request` before its tenant's raw cutoff
    (epoch seconds: `raw_from` for every tenant, a later one in `tenants`), or None."""
    latest = _at(max([raw_from, *tenants.values()]))
    if isinstance(request, Pushed):
        ts, tenant = request.table.column("ts"), request.table.column("tenant_id")
        if not request.table.num_rows or pc.min(ts).as_py() >= latest:
            return None
        stamps, names = ts.to_pylist(), tenant.to_pylist()
    else:
        stamps = [row.ts for _, rows in request for row in rows]
        if not stamps or min(stamps) >= latest:
            return None
        names = [row.tenant_id for _, rows in request for row in rows]
    for at, tenant_id in zip(stamps, names, strict=True):
        cutoff = max(raw_from, tenants.get(tenant_id, 0))
        if at < _at(cutoff):
            return tenant_id, at, cutoff
    return None


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def rows_in(request: Request) -> int:
    if isinstance(request, Pushed):
        n: int = request.table.num_rows
        return n
    return sum(len(rows) for _, rows in request)


class Commit(NamedTuple):
    batch: int
    first_seq: int
    last_seq: int
    rows: int
    skipped: int = 0  # samples of new series over their tenant's limit (scrapes only)


class Staged(NamedTuple):
    """A batch ready to insert, or inserted in a transaction not yet committed."""

    commit: Commit
    tenants: frozenset[str]  # whose rows it holds (for the announcement)
    last_ts: datetime | None  # its last row's time (rows are in time order)
    resolved: Resolved
    points: pa.Table | list[PointRow]  # what goes into `points` (a small group's as rows)
    scrapes: pa.Table | None
    keys: list[EventKey]  # idempotency keys it stores


def with_labels(table: pa.Table) -> pa.Table:
    """Rows without a `labels` column have the empty label set (one dictionary entry)."""
    if "labels" in table.schema.names:
        return table
    none = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(table.num_rows, np.int32)), pa.array([NO_LABELS])
    )
    return table.append_column("labels", none)


class Appenders:
    """The write connection's appenders, one per table, made when first used: rows that
    Python holds go in without a statement to parse or an Arrow scan that calls back into
    Python. Each call back waits for the GIL, which a busy event loop holds up to a switch
    interval: a group of eight small pushes took ~10 ms to insert through an Arrow scan
    beside a thread running Python, ~2.8 ms through an appender (0.8 and 0.7 alone)."""

    TABLES = frozenset(("points", "ingest_events"))  # the only tables appended to

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        self._made: dict[str, duckdb.Appender] = {}

    def append(self, table: str, rows: Sequence[tuple[object, ...]]) -> None:
        """Append `rows` (in the table's column order) with one flush, in the connection's
        transaction: all of them, or none and the error."""
        if table not in self.TABLES:
            raise ValueError(f"not a table rows are appended to: {table!r}")
        appender = self._made.get(table)
        if appender is None:
            appender = self._made[table] = self._con.appender(table)
        try:
            appender.append_rows(rows)
            appender.flush()
        except BaseException:
            appender.clear()  # nothing of a failed write is kept for the next one
            raise


def insert(
    con: duckdb.DuckDBPyConnection, appenders: Appenders, staged: Sequence["Staged"]
) -> None:
    """Insert the batches `staged` atomically, one statement (or appender flush) per table
    for all of them: in a transaction when that takes more than one, else alone (a
    transaction of its own: BEGIN and COMMIT cost a statement each, a third of a small push
    group's time here)."""
    rows = [row for s in staged if isinstance(s.points, list) for row in s.points]
    points = [s.points for s in staged if isinstance(s.points, pa.Table) and s.points.num_rows]
    series = [s.resolved.new for s in staged if s.resolved.new.num_rows]
    scrapes = [s.scrapes for s in staged if s.scrapes is not None]
    keyed = [(*key, s.commit.batch) for s in staged for key in s.keys]
    steps: list[Callable[[], object]] = []
    for statement, tables in ((_INSERT_SERIES, series), (_INSERT_POINTS, points),
                              (_INSERT_SCRAPES, scrapes)):  # fmt: skip
        if tables:
            steps.append(partial(_insert_arrow, con, statement, pa.concat_tables(tables)))
    if rows:
        steps.append(partial(appenders.append, "points", rows))
    if keyed:
        steps.append(partial(appenders.append, "ingest_events", keyed))
    if not steps:
        return
    if len(steps) == 1:
        steps[0]()
        return
    con.begin()
    try:
        for step in steps:
            step()
        con.commit()
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.rollback()
        raise


SMALL_GROUP_ROWS = 512
_NO_NEW_SERIES = pa.Table.from_pylist([], schema=SERIES_KEYS_SCHEMA)
_NO_SERIES = Resolved(pa.array([], pa.int64()), None, _NO_NEW_SERIES, [], Counter(), 0)


def stage_known(
    requests: Sequence[Request],
    claimed: set[EventKey],
    series_id: Callable[[SampleRow], int | None],
    batch: int,
    seq: int,
) -> list["Staged | None"] | None:
    """The batches of a small group of pushes whose rows are all of known series, numbered
    from `batch` and `seq`, each with its `points` rows; None when a row is of a new series
    (the column path resolves those, under the tenants' limits).

    Per row, in Python: for a few hundred rows that costs less than the dozen Arrow
    kernels of the column path, whose fixed cost is most of a small push's."""
    plans = []
    for events in requests:
        if isinstance(events, Pushed):
            return None  # columns take the column path
        rows, mine = _unclaimed_rows(events, claimed)
        ids = [series_id(row) for row in rows]
        if None in ids:
            return None
        plans.append((rows, ids, mine))
    out: list[Staged | None] = []
    for rows, ids, keys in plans:
        n = len(rows)
        if n == 0 and not keys:
            out.append(None)
            continue
        points = [
            (seq + i, batch, row.ts, series, row.kind, row.value)
            for i, (row, series) in enumerate(zip(rows, ids, strict=True))
        ]
        commit = Commit(batch, seq, seq + n - 1, n)
        tenants = frozenset(row.tenant_id for row in rows)
        last = rows[-1].ts if rows else None
        out.append(Staged(commit, tenants, last, _NO_SERIES, points, None, keys))
        batch += 1
        seq += n
    return out


def _insert_arrow(con: duckdb.DuckDBPyConnection, statement: str, incoming: pa.Table) -> None:
    """Run `statement`, which reads the Arrow table `incoming` by that name: DuckDB finds
    it among this frame's locals (a replacement scan). Here that costs a third less than
    `from_arrow(...).insert_into` and half of `register` + `unregister`."""
    con.execute(statement)


def tables_of(
    requests: Sequence[Request], claimed: set[EventKey]
) -> tuple[list[pa.Table], list[list[EventKey]]]:
    """Each request's rows in time order, without events whose ids are `claimed`
    (stored, or taken by a request before it), which this adds to."""
    tables, keys_of = [], []
    for request in requests:
        if isinstance(request, Pushed):
            table, mine = _unclaimed(request, claimed)
        else:
            rows, mine = _unclaimed_rows(request, claimed)
            table = to_arrow(rows)
        tables.append(table)
        keys_of.append(mine)
    return tables, keys_of


def _unclaimed_rows(
    events: Events, claimed: set[EventKey]
) -> tuple[list[SampleRow], list[EventKey]]:
    """The rows of events whose ids are not `claimed` (which this adds to), in time order
    (which lets DuckDB's zone maps skip), and the ids this request claims."""
    rows: list[SampleRow] = []
    mine: list[EventKey] = []
    for key, event_rows in events:
        if key is not None:
            if key in claimed:
                continue
            claimed.add(key)
            mine.append(key)
        rows.extend(event_rows)
    rows.sort(key=lambda row: row.ts)
    return rows, mine


def _unclaimed(request: Pushed, claimed: set[EventKey]) -> tuple[pa.Table, list[EventKey]]:
    """`tables_of` for columns: the rows of unclaimed events, in time order (stable)."""
    dropped, mine = [], []
    for i, key in enumerate(request.keys if any(request.keys) else ()):
        if key is not None:
            if key in claimed:
                dropped.append(i)
                continue
            claimed.add(key)
            mine.append(key)
    table = request.table
    if dropped:
        table = table.filter(pa.array(~np.isin(request.event, dropped)))
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    if len(ts) > 1 and (ts[1:] < ts[:-1]).any():
        table = table.take(pa.array(np.argsort(ts, kind="stable")))
    return table, mine


def scrapes_table(batch: int, scrapes: Sequence[ScrapeRow]) -> pa.Table:
    cols = list(zip(*scrapes, strict=True))
    return pa.table(
        {
            "batch": pa.array([batch] * len(scrapes), pa.int64()),
            "ts": pa.array(cols[0], pa.timestamp("us", tz="UTC")),
            "tenant_id": pa.array(cols[1], pa.string()),
            "tool_id": pa.array(cols[2], pa.string()),
            "source": pa.array(cols[3], pa.string()),
            "up": pa.array(cols[4], pa.bool_()),
            "duration_seconds": pa.array(cols[5], pa.float64()),
            "error": pa.array(cols[6], pa.string()),
        }
    )
