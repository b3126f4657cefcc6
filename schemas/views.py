"""The views and macros over `points` and `series_keys`: the service's database and the
notebooks' connection (over the Parquet mirror) both run this text, so analysts query
with the service's own definitions.

The truth about deltas. A counter's delta is the rise since the previous sample of its
series, or its whole value where it dropped (an upstream restart is new work, never a
negative number); the first sample of a series has none. `untyped` samples are counted
as counters, as PromQL's functions treat them. A `delta` sample is its own increment.
Gauges have none. A series is one `series_id`: windows partition by that one integer.
"""

# The kinds whose deltas are rises between samples.
CUMULATIVE = "('counter', 'untyped')"

SERIES_VIEWS = f"""
CREATE OR REPLACE MACRO sample_delta(kind, value, prev) AS
    CASE
        WHEN kind = 'delta' THEN value
        WHEN kind IN {CUMULATIVE} AND prev IS NOT NULL
            THEN CASE WHEN value >= prev THEN value - prev ELSE value END
    END;

CREATE OR REPLACE VIEW samples AS
SELECT p.seq, p.batch, p.ts, k.tenant_id, k.tool_id, k.session_id, k.source, k.metric,
       k.labels, p.kind, p.value
FROM points p JOIN series_keys k ON k.id = p.series_id;

CREATE OR REPLACE VIEW point_deltas AS
SELECT seq, batch, ts, series_id, kind, value,
       sample_delta(kind, value,
                    lag(value) OVER (PARTITION BY series_id ORDER BY ts, seq)) AS delta
FROM points;

CREATE OR REPLACE VIEW sample_deltas AS
SELECT d.seq, d.batch, d.ts, k.tenant_id, k.tool_id, k.session_id, k.source, k.metric,
       k.labels, d.kind, d.value, d.delta
FROM point_deltas d JOIN series_keys k ON k.id = d.series_id;

-- The same rows as `point_deltas` for ts in [t_from, t_to), but filtering inside the
-- window function so DuckDB can skip old row groups. A series' previous sample is its
-- latest within `lookback` before t_from (one row per series, an aggregate: the window
-- then sorts only the range's rows, not the lookback's); a series with no sample there
-- (a long gap) falls back to its last sample before that, so the answer is exact.
CREATE OR REPLACE MACRO point_deltas_between(t_from, t_to, lookback := INTERVAL 1 DAY) AS TABLE
WITH inrange AS (
    SELECT seq, batch, ts, series_id, kind, value FROM points
    WHERE ts >= CAST(t_from AS TIMESTAMPTZ) AND ts < CAST(t_to AS TIMESTAMPTZ)
),
latest AS (  -- only the last sample before the range can precede a sample in it
    SELECT unnest(arg_max({{'seq': seq, 'batch': batch, 'ts': ts, 'series_id': series_id,
                           'kind': kind, 'value': value}}, (ts, seq)))
    FROM points
    WHERE ts >= CAST(t_from AS TIMESTAMPTZ) - lookback AND ts < CAST(t_from AS TIMESTAMPTZ)
    GROUP BY series_id
),
orphans AS (  -- only cumulative kinds look at their previous sample
    SELECT series_id FROM inrange
    GROUP BY series_id
    HAVING bool_or(kind IN {CUMULATIVE})
    EXCEPT SELECT series_id FROM latest
),
older AS (
    SELECT p.seq, p.batch, p.ts, p.series_id, p.kind, p.value FROM points p
    SEMI JOIN orphans o ON p.series_id = o.series_id
    WHERE p.ts < CAST(t_from AS TIMESTAMPTZ) - lookback
    QUALIFY row_number() OVER (PARTITION BY p.series_id ORDER BY p.ts DESC, p.seq DESC) = 1
),
windowed AS (
    SELECT *, lag(value) OVER (PARTITION BY series_id ORDER BY ts, seq) AS prev
    FROM (SELECT * FROM inrange UNION ALL SELECT * FROM latest UNION ALL SELECT * FROM older)
)
SELECT seq, batch, ts, series_id, kind, value, sample_delta(kind, value, prev) AS delta
FROM windowed
WHERE ts >= CAST(t_from AS TIMESTAMPTZ);

CREATE OR REPLACE MACRO sample_deltas_between(t_from, t_to, lookback := INTERVAL 1 DAY) AS TABLE
SELECT d.seq, d.batch, d.ts, k.tenant_id, k.tool_id, k.session_id, k.source, k.metric,
       k.labels, d.kind, d.value, d.delta
FROM point_deltas_between(t_from, t_to, lookback := lookback) d
JOIN series_keys k ON k.id = d.series_id;

-- Each series once: its fields, the kind of its latest sample, its first and last time.
CREATE OR REPLACE VIEW series AS
SELECT k.id AS series_id, k.tenant_id, k.tool_id, k.session_id, k.source, k.metric,
       k.labels, k.name, p.kind, p.first_ts, p.last_ts, p.samples
FROM series_keys k
JOIN (SELECT series_id, arg_max(kind, seq) AS kind, min(ts) AS first_ts, max(ts) AS last_ts,
             count(*) AS samples
      FROM points GROUP BY series_id) p ON p.series_id = k.id;
"""

# The tables the views read, for a database that has none yet (the notebooks' empty
# mirror): the same columns and types as the service's.
EMPTY_TABLES = """
CREATE OR REPLACE VIEW points AS
SELECT * FROM (SELECT NULL::BIGINT AS seq, NULL::BIGINT AS batch, NULL::TIMESTAMPTZ AS ts,
    NULL::BIGINT AS series_id, NULL::VARCHAR AS kind, NULL::DOUBLE AS value) WHERE false;
CREATE OR REPLACE VIEW series_keys AS
SELECT * FROM (SELECT NULL::BIGINT AS id, NULL::VARCHAR AS tenant_id, NULL::VARCHAR AS tool_id,
    NULL::VARCHAR AS session_id, NULL::VARCHAR AS source, NULL::VARCHAR AS metric,
    NULL::MAP(VARCHAR, VARCHAR) AS labels, NULL::VARCHAR AS name) WHERE false;
"""
