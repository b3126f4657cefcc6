"""Ordered, named schema migrations. Never edit one that has shipped; add the next."""

from collections.abc import Callable
from typing import NamedTuple

import duckdb

from schemas import series_migration
from schemas.views import SERIES_VIEWS


class Migration(NamedTuple):
    name: str
    sql: str
    # Data a migration moves in Python (before its SQL runs), in the same transaction.
    run: Callable[[duckdb.DuckDBPyConnection], None] | None = None


# The series key: every delta is computed within one of these.
SERIES = "tenant_id, tool_id, session_id, source, metric"

_SAMPLES = """
CREATE TABLE samples (
    seq        BIGINT NOT NULL,      -- global, strictly increasing, the stream cursor
    batch      BIGINT NOT NULL,      -- one collection tick or one push request
    ts         TIMESTAMPTZ NOT NULL,
    tenant_id  VARCHAR NOT NULL,
    tool_id    VARCHAR,
    session_id VARCHAR,
    source     VARCHAR NOT NULL,
    metric     VARCHAR NOT NULL,     -- dotted path, e.g. mlx_metrics.total_embeddings
    kind       VARCHAR NOT NULL CHECK (kind IN ('counter', 'gauge', 'delta')),
    value      DOUBLE NOT NULL
);
CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
INSERT INTO meta VALUES ('epoch', CAST(uuid() AS VARCHAR));
-- One row per source per tick, so a failed scrape keeps its error text.
CREATE TABLE scrapes (
    batch            BIGINT NOT NULL,
    ts               TIMESTAMPTZ NOT NULL,
    tenant_id        VARCHAR NOT NULL,
    tool_id          VARCHAR,
    source           VARCHAR NOT NULL,
    up               BOOLEAN NOT NULL,
    duration_seconds DOUBLE NOT NULL,
    error            VARCHAR
);
-- Idempotency keys of pushed events: a repeated event_id is stored once per tenant.
CREATE TABLE ingest_events (
    tenant_id VARCHAR NOT NULL,
    event_id  VARCHAR NOT NULL,
    batch     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);
-- Append-only history of tenant settings; the newest row per tenant is in force.
CREATE TABLE tenant_settings (
    tenant_id  VARCHAR NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL,
    settings   JSON NOT NULL
);
"""

# The truth about deltas. A counter's delta is the rise since the previous sample of its
# series, or its whole value where it dropped (an upstream restart is new work, never a
# negative number); the first sample of a series has none. A `delta` sample is its own
# increment. Gauges have none.
_DELTAS = f"""
CREATE MACRO sample_delta(kind, value, prev) AS
    CASE
        WHEN kind = 'delta' THEN value
        WHEN kind = 'counter' AND prev IS NOT NULL
            THEN CASE WHEN value >= prev THEN value - prev ELSE value END
    END;

CREATE VIEW sample_deltas AS
SELECT seq, batch, ts, tenant_id, tool_id, session_id, source, metric, kind, value,
       sample_delta(kind, value, prev) AS delta
FROM (
    SELECT *, lag(value) OVER (PARTITION BY {SERIES} ORDER BY ts, seq) AS prev
    FROM samples
);

-- The same rows as `sample_deltas` for ts in [t_from, t_to), but filtering inside the
-- window function so DuckDB can skip old row groups. A series' previous sample is looked
-- for within `lookback` before t_from; a series with no sample there (a long gap) falls
-- back to its last sample before that, so the answer is exact, not approximate.
CREATE MACRO sample_deltas_between(t_from, t_to, lookback := INTERVAL 1 DAY) AS TABLE
WITH recent AS (
    SELECT * FROM samples
    WHERE ts >= CAST(t_from AS TIMESTAMPTZ) - lookback AND ts < CAST(t_to AS TIMESTAMPTZ)
),
orphans AS (  -- only counters look at their previous sample
    SELECT {SERIES} FROM recent
    GROUP BY ALL
    HAVING min(ts) >= CAST(t_from AS TIMESTAMPTZ) AND bool_or(kind = 'counter')
),
older AS (
    SELECT s.* FROM samples s
    SEMI JOIN orphans o
        ON s.tenant_id = o.tenant_id
        AND s.tool_id IS NOT DISTINCT FROM o.tool_id
        AND s.session_id IS NOT DISTINCT FROM o.session_id
        AND s.source = o.source
        AND s.metric = o.metric
    WHERE s.ts < CAST(t_from AS TIMESTAMPTZ) - lookback
    QUALIFY row_number() OVER (PARTITION BY {SERIES} ORDER BY ts DESC, seq DESC) = 1
),
windowed AS (
    SELECT *, lag(value) OVER (PARTITION BY {SERIES} ORDER BY ts, seq) AS prev
    FROM (SELECT * FROM recent UNION ALL SELECT * FROM older)
)
SELECT seq, batch, ts, tenant_id, tool_id, session_id, source, metric, kind, value,
       sample_delta(kind, value, prev) AS delta
FROM windowed
WHERE ts >= CAST(t_from AS TIMESTAMPTZ);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_samples", _SAMPLES),
    Migration("0002_sample_deltas", _DELTAS),
)

# Hourly increases per series, materialized by the writer for closed hours. `meta` keeps
# `rollup_until` (hours before it are materialized) and `rollup_seq` (rows up to it were
# considered). A row committed later with an older ts makes the hours from its hour on
# stale; queries lower the watermark to that hour until the next refresh redoes them.
_ROLLUPS = """
CREATE TABLE rollup_hourly (
    hour       TIMESTAMPTZ NOT NULL,
    tenant_id  VARCHAR NOT NULL,
    tool_id    VARCHAR,
    session_id VARCHAR,
    source     VARCHAR NOT NULL,
    metric     VARCHAR NOT NULL,
    increase   DOUBLE NOT NULL
);
INSERT INTO meta VALUES ('rollup_until', '0'), ('rollup_seq', '0');
"""

MIGRATIONS = (*MIGRATIONS, Migration("0003_rollup_hourly", _ROLLUPS))

# Wave 2: samples refer to their series by id (`points`), the series' strings and labels
# are stored once (`series_keys`), rollups are per series id; `samples`, `sample_deltas`
# and the macros become views over them with the same columns plus `labels`.
MIGRATIONS = (*MIGRATIONS, Migration("0004_series", SERIES_VIEWS, series_migration.run))

# Wave 2 retention: rollups in three tiers, kept longer than raw rows: 1 h from raw rows,
# 1 d from hours, and 1 m materialized from raw rows that retention is about to delete.
# The next refresh rebuilds the hour and day tiers from the raw rows (all still there:
# nothing was deleted before this migration). `meta` keeps the cutoffs the retention job
# applied (epoch seconds, 0: nothing deleted) and the highest seq and batch it ever saw,
# which the writer numbers after even if their rows are gone; `tenant_retention` a
# tenant's own later raw cutoff (its `retention_days`).
_TIERS = """
CREATE TABLE rollup_minute (
    minute     TIMESTAMPTZ NOT NULL,
    series_id  BIGINT NOT NULL,
    increase   DOUBLE NOT NULL
);
CREATE TABLE rollup_daily (
    day        TIMESTAMPTZ NOT NULL,
    series_id  BIGINT NOT NULL,
    increase   DOUBLE NOT NULL
);
CREATE TABLE tenant_retention (
    tenant_id  VARCHAR NOT NULL,
    raw_from   BIGINT NOT NULL
);
INSERT INTO meta VALUES ('raw_from', '0'), ('minute_from', '0'), ('rollup_from', '0'),
    ('retained_seq', '0'), ('retained_batch', '0');
UPDATE meta SET value = '0' WHERE key IN ('rollup_until', 'rollup_seq');
"""

MIGRATIONS = (*MIGRATIONS, Migration("0005_rollup_tiers", _TIERS))
