"""What the writer stages before a transaction: batches numbered and turned into the
rows of each table, and the statements that insert many batches at once."""

import contextlib
from collections.abc import Sequence
from typing import NamedTuple

import duckdb
import numpy as np
import pyarrow as pa

from ingest.series import Resolved
from schemas.labels import NO_LABELS
from schemas.rows import SampleRow, ScrapeRow, to_arrow

# Column lists are constants: the only identifiers the writer ever puts into SQL.
_INSERT_POINTS = """
INSERT INTO points SELECT seq, batch, ts, series_id, kind, value FROM incoming_points
"""
_INSERT_SERIES = "INSERT INTO series_keys SELECT * FROM incoming_series"
_INSERT_SCRAPES = """
INSERT INTO scrapes
SELECT batch, ts, tenant_id, tool_id, source, up, duration_seconds, error FROM incoming_scrapes
"""
_INSERT_KEYS = """
INSERT INTO ingest_events
SELECT unnest($tenants) AS tenant_id, unnest($ids) AS event_id, unnest($batches) AS batch
"""
EXISTING_KEYS = """
SELECT k.tenant_id, k.event_id
FROM (SELECT unnest($tenants) AS tenant_id, unnest($ids) AS event_id) k
SEMI JOIN ingest_events e ON e.tenant_id = k.tenant_id AND e.event_id = k.event_id
"""

EventKey = tuple[str, str]  # (tenant_id, event_id)
Events = Sequence[tuple[EventKey | None, Sequence[SampleRow]]]  # one push request


class Commit(NamedTuple):
    batch: int
    first_seq: int
    last_seq: int
    rows: int
    skipped: int = 0  # samples of new series over their tenant's limit (scrapes only)


class Staged(NamedTuple):
    """A batch ready to insert, or inserted in a transaction not yet committed."""

    commit: Commit
    table: pa.Table  # its rows as given (for the announcement)
    resolved: Resolved
    points: pa.Table  # what goes into `points`
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


def insert(con: duckdb.DuckDBPyConnection, staged: Sequence["Staged"]) -> None:
    """Insert the batches `staged`, one statement per table for all of them, inside
    the caller's open transaction."""
    points = [s.points for s in staged if s.points.num_rows]
    series = [s.resolved.new for s in staged if s.resolved.new.num_rows]
    scrapes = [s.scrapes for s in staged if s.scrapes is not None]
    keyed = [(key, s.commit.batch) for s in staged for key in s.keys]
    try:
        if series:
            con.register("incoming_series", pa.concat_tables(series))
            con.execute(_INSERT_SERIES)
        if points:
            con.register("incoming_points", pa.concat_tables(points))
            con.execute(_INSERT_POINTS)
        if scrapes:
            con.register("incoming_scrapes", pa.concat_tables(scrapes))
            con.execute(_INSERT_SCRAPES)
        if keyed:
            params = {
                "tenants": [k[0] for k, _ in keyed],
                "ids": [k[1] for k, _ in keyed],
                "batches": [b for _, b in keyed],
            }
            con.execute(_INSERT_KEYS, params)
    finally:
        for name in ("incoming_points", "incoming_series", "incoming_scrapes"):
            with contextlib.suppress(duckdb.Error):
                con.unregister(name)


def tables_of(
    requests: Sequence[Events], claimed: set[EventKey]
) -> tuple[list[pa.Table], list[list[EventKey]]]:
    """Each request's rows in time order, without events whose ids are `claimed`
    (stored, or taken by a request before it), which this adds to."""
    tables, keys_of = [], []
    for events in requests:
        rows: list[SampleRow] = []
        mine: list[EventKey] = []
        for key, event_rows in events:
            if key is not None:
                if key in claimed:
                    continue
                claimed.add(key)
                mine.append(key)
            rows.extend(event_rows)
        rows.sort(key=lambda row: row.ts)  # time order lets DuckDB's zone maps skip
        tables.append(to_arrow(rows))
        keys_of.append(mine)
    return tables, keys_of


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
