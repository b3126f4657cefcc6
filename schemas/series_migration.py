"""Migration 0004: the long `samples` table becomes `points` (seq, batch, ts, series_id,
kind, value) and `series_keys` (each series' strings and labels, once).

A stored metric with labels in its text (`http_requests_total{code="200"}`, as the old
Prometheus parser kept them) becomes the bare name and its labels, canonical (keys
sorted, empty values dropped); one that does not parse as a text form keeps its string.
Every answer is the same after the migration: a query that names a series by its old
text (`metric=http_requests_total{code="200"}`) still finds it (query/sql.py).
"""

import duckdb
import pyarrow as pa

from schemas.labels import LabelError, Labels, parse_text_form, text_form

TABLES = """
CREATE TABLE series_keys (
    id         BIGINT NOT NULL,       -- what `points.series_id` refers to
    tenant_id  VARCHAR NOT NULL,
    tool_id    VARCHAR,
    session_id VARCHAR,
    source     VARCHAR NOT NULL,
    metric     VARCHAR NOT NULL,      -- the bare name as exposed
    labels     MAP(VARCHAR, VARCHAR) NOT NULL,  -- canonical: keys sorted, no empty values
    name       VARCHAR NOT NULL       -- the text form: metric{k="v",...}
);
CREATE TABLE points (
    seq        BIGINT NOT NULL,       -- global, strictly increasing, the stream cursor
    batch      BIGINT NOT NULL,       -- one collection tick or one push request
    ts         TIMESTAMPTZ NOT NULL,
    series_id  BIGINT NOT NULL,
    kind       VARCHAR NOT NULL CHECK (kind IN ('counter', 'gauge', 'delta', 'untyped')),
    value      DOUBLE NOT NULL
);
CREATE TABLE rollup_series (
    hour       TIMESTAMPTZ NOT NULL,
    series_id  BIGINT NOT NULL,
    increase   DOUBLE NOT NULL
);
"""

_OLD_KEYS = """
SELECT tenant_id, tool_id, session_id, source, metric
FROM samples GROUP BY ALL ORDER BY min(seq)
"""
_ON = """
    s.tenant_id = o.tenant_id AND s.tool_id IS NOT DISTINCT FROM o.tool_id
    AND s.session_id IS NOT DISTINCT FROM o.session_id AND s.source = o.source
    AND s.metric = o.metric
"""
_MOVE = f"""
INSERT INTO series_keys SELECT * FROM new_series ORDER BY id;
INSERT INTO points
SELECT s.seq, s.batch, s.ts, o.id, s.kind, s.value
FROM samples s JOIN old_keys o ON {_ON} ORDER BY s.seq;
INSERT INTO rollup_series
SELECT s.hour, o.id, sum(s.increase) FROM rollup_hourly s JOIN old_keys o ON {_ON}
GROUP BY ALL;
DROP VIEW sample_deltas;
DROP TABLE samples;
DROP TABLE rollup_hourly;
ALTER TABLE rollup_series RENAME TO rollup_hourly;
"""

LABELS_TYPE = pa.map_(pa.string(), pa.string())
SERIES_KEYS_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("tenant_id", pa.string()),
        ("tool_id", pa.string()),
        ("session_id", pa.string()),
        ("source", pa.string()),
        ("metric", pa.string()),
        ("labels", LABELS_TYPE),
        ("name", pa.string()),
    ]
)


def split_name(stored: str) -> tuple[str, Labels]:
    """An old stored metric as (bare name, labels); kept whole if it is not a text form."""
    if "{" not in stored:
        return stored, ()
    try:
        return parse_text_form(stored)
    except LabelError:
        return stored, ()


def run(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(TABLES)
    ids: dict[tuple[object, ...], int] = {}
    old: list[tuple[object, ...]] = []
    new: list[tuple[object, ...]] = []
    for tenant_id, tool_id, session_id, source, metric in con.execute(_OLD_KEYS).fetchall():
        bare, labels = split_name(metric)
        key = (tenant_id, tool_id, session_id, source, bare, labels)
        if key not in ids:
            ids[key] = len(ids) + 1
            new.append((ids[key], tenant_id, tool_id, session_id, source, bare,
                        list(labels), text_form(bare, labels)))  # fmt: skip
        old.append((tenant_id, tool_id, session_id, source, metric, ids[key]))
    names = ("tenant_id", "tool_id", "session_id", "source", "metric", "id")
    old_cols = list(zip(*old, strict=True)) or [() for _ in names]
    old_keys = pa.table(
        {
            name: pa.array(col, pa.int64() if name == "id" else pa.string())
            for name, col in zip(names, old_cols, strict=True)
        }
    )
    new_cols = list(zip(*new, strict=True)) or [() for _ in SERIES_KEYS_SCHEMA]
    new_series = pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(new_cols, SERIES_KEYS_SCHEMA, strict=True)],
        schema=SERIES_KEYS_SCHEMA,
    )
    con.register("old_keys", old_keys)
    con.register("new_series", new_series)
    try:
        con.execute(_MOVE)
    finally:
        con.unregister("old_keys")
        con.unregister("new_series")
