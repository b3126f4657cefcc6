"""The old service's read routes, computed from the append-only samples.

The old service stored one row per snapshot with fixed columns; here a source's metrics
are dotted paths. A metric feeds an old field by the last element of its path
(`metrics.total_tokens_saved` and a pushed `tokens_saved` both feed `tokens_saved`).
Counter fields are reset-aware increases (the same rollups + raw tail as
`/api/v1/increase`, so an upstream restart is new work, never a negative number); gauge
fields are averages of their samples, as the old service averaged them.
"""

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import duckdb

from query.history import LOOKBACK_MINUTES, increase_table
from query.sql import where
from schemas.models import SampleFilters
from schemas.nested import number, put
from schemas.rollups import HOUR
from schemas.times import rfc3339

DAY = 24 * HOUR

# Last path element → the old service's field.
COUNTERS = {
    "total_tokens_saved": "tokens_saved",
    "tokens_saved": "tokens_saved",
    "total_compressions": "total_compressions",
    "total_embeddings": "total_embeddings",
}
GAUGES = {
    "cache_hit_rate": "cache_hit_rate",
    "avg_compression_ratio": "compression_ratio",
    "compression_ratio": "compression_ratio",
}
# Cumulative values the old history rows carried besides the counters above.
HISTORY_VALUES = {**GAUGES, "cache_hits": "cache_hits", "avg_latency_ms": "avg_latency_ms"}

# A session is active while its samples keep arriving (the old service's timeout).
ACTIVE_SESSION_MINUTES = 30
# The old service's price of a token saved.
COST_PER_1K_TOKENS = 0.015

Totals = dict[str | None, dict[str, float]]


def _zeros() -> dict[str, float]:
    """Every counter field at 0."""
    return dict.fromkeys(set(COUNTERS.values()), 0.0)


def _field(metric: str, fields: dict[str, str]) -> str | None:
    return fields.get(metric.rsplit(".", 1)[-1])


def counter_totals(
    cur: duckdb.DuckDBPyConnection,
    filters: SampleFilters,
    start: datetime,
    end: datetime,
    by: str | None = None,
) -> Totals:
    """Each counter field's increase in [start, end), per value of the label `by`."""
    labels = [by, "metric"] if by else ["metric"]
    table = increase_table(cur, filters, labels, start, end, DAY)
    totals: Totals = defaultdict(_zeros)
    keys = table.column(by).to_pylist() if by else [None] * table.num_rows
    for key, metric, value in zip(
        keys, table.column("metric").to_pylist(), table.column("value").to_pylist(), strict=True
    ):
        field = _field(metric, COUNTERS)
        if field is not None:
            totals[key][field] += value
    return totals


_ACTIVITY = """
SELECT {key} AS key,
       avg(value) FILTER (kind = 'gauge' AND list_contains($hit, name)) AS cache_hit_rate,
       avg(value) FILTER (kind = 'gauge' AND list_contains($ratio, name)) AS compression_ratio,
       count(DISTINCT batch) AS sample_count,
       count(DISTINCT session_id) AS total_sessions,
       count(DISTINCT session_id) FILTER (ts >= $active_since) AS active_sessions
FROM (SELECT *, string_split(metric, '.')[-1] AS name FROM samples WHERE {cond})
GROUP BY ALL
"""


def activity(
    cur: duckdb.DuckDBPyConnection,
    filters: SampleFilters,
    start: datetime,
    end: datetime,
    by: str | None = None,
) -> dict[str | None, dict[str, Any]]:
    """Gauge averages, snapshot count (ticks and pushes) and sessions seen, per `by`."""
    cond, args = where(filters, start, end)
    args.update(
        hit=[k for k, v in GAUGES.items() if v == "cache_hit_rate"],
        ratio=[k for k, v in GAUGES.items() if v == "compression_ratio"],
        active_since=end - timedelta(minutes=ACTIVE_SESSION_MINUTES),
    )
    sql = _ACTIVITY.format(key=by or "NULL", cond=cond)  # `by` is a fixed column name
    result = cur.execute(sql, args)
    names = [column[0] for column in result.description or ()]
    return {row[0]: dict(zip(names[1:], row[1:], strict=True)) for row in result.fetchall()}


def summary(totals: dict[str, float], seen: dict[str, Any] | None) -> dict[str, Any]:
    """One group's numbers under the old field names (zeros where nothing was seen)."""
    seen = seen or {}
    return {
        "tokens_saved": number(totals["tokens_saved"]),
        "total_compressions": number(totals["total_compressions"]),
        "total_embeddings": number(totals["total_embeddings"]),
        "avg_cache_hit_rate": seen.get("cache_hit_rate") or 0.0,
        "avg_compression_ratio": seen.get("compression_ratio") or 0.0,
        "active_sessions": seen.get("active_sessions") or 0,
        "total_sessions": seen.get("total_sessions") or 0,
        "sample_count": seen.get("sample_count") or 0,
    }


def grouped(
    cur: duckdb.DuckDBPyConnection,
    filters: SampleFilters,
    start: datetime,
    end: datetime,
    by: str | None = None,
) -> dict[str | None, dict[str, Any]]:
    """`summary` per value of `by` (one group, key None, without `by`)."""
    totals = counter_totals(cur, filters, start, end, by)
    seen = activity(cur, filters, start, end, by)
    return {key: summary(totals.get(key) or _zeros(), seen.get(key)) for key in {*totals, *seen}}


def hourly_savings(
    cur: duckdb.DuckDBPyConnection, filters: SampleFilters, start: datetime, end: datetime
) -> list[tuple[datetime, float]]:
    """Tokens saved per clock hour in [start, end), hours with savings only."""
    table = increase_table(cur, filters, ["metric"], start, end, HOUR)
    per_hour: dict[datetime, float] = defaultdict(float)
    for t, metric, value in zip(
        table.column("t").to_pylist(),
        table.column("metric").to_pylist(),
        table.column("value").to_pylist(),
        strict=True,
    ):
        if _field(metric, COUNTERS) == "tokens_saved":
            per_hour[t] += value
    return [(t, v) for t, v in sorted(per_hour.items()) if v > 0]


def cost(tokens: float) -> float:
    return round(tokens / 1000 * COST_PER_1K_TOKENS, 2)


_HISTORY = f"""
SELECT batch, max(ts) AS ts, source, tenant_id, tool_id, session_id,
       list(name) AS names, list(value) AS vals, list(delta) AS deltas
FROM (
    SELECT *, string_split(metric, '.')[-1] AS name
    FROM sample_deltas_between($start, $end, lookback := INTERVAL {LOOKBACK_MINUTES} MINUTE)
    WHERE {{cond}}
)
WHERE list_contains($names, name)
GROUP BY batch, source, tenant_id, tool_id, session_id
ORDER BY ts DESC, batch DESC, source DESC, tool_id DESC NULLS LAST, session_id DESC NULLS LAST
LIMIT $limit
"""


def history(
    cur: duckdb.DuckDBPyConnection,
    filters: SampleFilters,
    start: datetime,
    end: datetime,
    limit: int,
) -> list[dict[str, Any]]:
    """The newest `limit` snapshots in [start, end), oldest first, as the old rows.

    A snapshot is one source's samples from one tick or push, per tool and session: its
    cumulative values under the old column names and, for counters, `<field>_delta`.
    """
    cond, args = where(filters)
    args.update(start=start, end=end, limit=limit, names=[*COUNTERS, *HISTORY_VALUES])
    rows = cur.execute(_HISTORY.format(cond=cond), args).fetchall()
    out = []
    for _, ts, source, tenant_id, tool_id, session_id, names, vals, deltas in reversed(rows):
        row: dict[str, Any] = {
            "timestamp": rfc3339(ts),
            "service": source,
            "tenant_id": tenant_id,
            "tool_id": tool_id,
            "session_id": session_id,
        }
        for name, value, delta in zip(names, vals, deltas, strict=True):
            if name in COUNTERS:
                field = COUNTERS[name]
                row[field] = number(value)
                row[f"{field}_delta"] = None if delta is None else number(delta)
            else:
                row[HISTORY_VALUES[name]] = number(value)
        out.append(row)
    return out


_CURRENT_VALUES = """
SELECT source, name, value FROM points p JOIN series_keys k ON k.id = p.series_id WHERE {cond}
QUALIFY row_number() OVER (PARTITION BY source, name ORDER BY ts DESC, seq DESC) = 1
ORDER BY source, name
"""
_CURRENT_STATUS = """
SELECT source, up, error FROM scrapes WHERE {cond}
QUALIFY row_number() OVER (PARTITION BY source ORDER BY ts DESC, batch DESC) = 1
"""


def current(
    cur: duckdb.DuckDBPyConnection, filters: SampleFilters, now: datetime
) -> dict[str, Any]:
    """Each source's latest values of the last day, nested as its upstream sent them,
    with the status of its last scrape (`healthy`, or `down` with the `error`). Both are
    read in one transaction: a tick committed between them would show a source's status
    without the values its scrape brought."""
    since = now - timedelta(days=1)
    cond, args = where(filters, since)
    scrape_filters = SampleFilters(tenant_id=filters.tenant_id, tool_id=filters.tool_id)
    scrape_cond, scrape_args = where(scrape_filters, since)
    cur.begin()
    try:
        values = cur.execute(_CURRENT_VALUES.format(cond=cond), args).fetchall()
        statuses = cur.execute(_CURRENT_STATUS.format(cond=scrape_cond), scrape_args).fetchall()
    finally:
        cur.rollback()  # it only read
    snapshot: dict[str, Any] = {"timestamp": rfc3339(now)}
    for source, metric, value in values:
        if metric not in ("up", "scrape_duration_seconds"):
            put(snapshot.setdefault(source, {"status": "healthy"}), metric, number(value))
    for source, up, error in statuses:
        entry = snapshot.setdefault(source, {})
        entry["status"] = "healthy" if up else "down"
        if not up:
            entry["error"] = error
    return snapshot


def empty_summary() -> dict[str, Any]:
    return summary(_zeros(), None)


def session_summary(
    cur: duckdb.DuckDBPyConnection, filters: SampleFilters, now: datetime
) -> dict[str, Any]:
    """`summary` over all of a session's samples (zeros for a session never seen)."""
    cond, args = where(filters)
    sql = f"SELECT min(ts), max(ts) FROM samples WHERE {cond}"
    first, last = cur.execute(sql, args).fetchall()[0]
    if first is None:
        return empty_summary()
    end = max(now, last + timedelta(milliseconds=1))
    return grouped(cur, filters, first, end).get(None) or empty_summary()


# `/metrics/latest`: the old service asked its upstreams; the latest stored values here.
LATEST_COUNTERS = {**COUNTERS, "cache_hits": "cache_hits", "cache_misses": "cache_misses"}
LATEST_FIELDS = {**LATEST_COUNTERS, **GAUGES}
_LATEST = """
SELECT string_split(k.metric, '.')[-1] AS name, p.value, p.ts
FROM points p JOIN series_keys k ON k.id = p.series_id
WHERE {cond} AND cardinality(k.labels) = 0
  AND list_contains($names, string_split(k.metric, '.')[-1])
QUALIFY row_number() OVER (PARTITION BY p.series_id ORDER BY p.ts DESC, p.seq DESC) = 1
"""


def latest_values(
    cur: duckdb.DuckDBPyConnection, filters: SampleFilters, now: datetime
) -> dict[str, Any]:
    """The old `/metrics/latest` fields: each counter field the sum of its series' latest
    values (one per tool and session), each gauge field its newest value; 0 if unseen."""
    cond, args = where(filters)
    args["names"] = list(LATEST_FIELDS)
    body: dict[str, Any] = dict.fromkeys(sorted(set(LATEST_FIELDS.values())), 0)
    newest: dict[str, datetime] = {}
    stamp: datetime | None = None
    for name, value, ts in cur.execute(_LATEST.format(cond=cond), args).fetchall():
        field = LATEST_FIELDS[name]
        stamp = ts if stamp is None else max(stamp, ts)
        if name in LATEST_COUNTERS:
            body[field] = number(body[field] + value)
        elif field not in newest or ts > newest[field]:
            newest[field] = ts
            body[field] = number(value)
    return {"timestamp": rfc3339(stamp or now), **body}


# Gauge-like fields `/metrics/tool/{id}` averages, by last path element.
TOOL_AVERAGES: dict[str, tuple[str, ...]] = {
    "avg_embeddings": ("total_embeddings",),
    "avg_cache_hit_rate": ("cache_hit_rate",),
    "avg_tokens_saved": ("total_tokens_saved", "tokens_saved"),
    "avg_compression_ratio": ("avg_compression_ratio", "compression_ratio"),
    "avg_quality_score": ("quality_score", "avg_quality_score"),
    "avg_patterns": ("patterns", "patterns_detected"),
}
_TOOL = """
SELECT count(DISTINCT batch) AS sample_count, {averages},
       max(value) FILTER (list_contains($p_max, name)) AS max_patterns
FROM (SELECT *, string_split(metric, '.')[-1] AS name FROM samples WHERE {cond})
"""


def tool_metrics(
    cur: duckdb.DuckDBPyConnection, filters: SampleFilters, start: datetime, end: datetime
) -> dict[str, Any]:
    """The old `/metrics/tool/{id}` numbers: reset-aware totals, averages over samples."""
    totals = counter_totals(cur, filters, start, end).get(None) or _zeros()
    cond, args = where(filters, start, end)
    averages = []
    for i, (field, last) in enumerate(TOOL_AVERAGES.items()):
        averages.append(f"avg(value) FILTER (list_contains($p{i}, name)) AS {field}")
        args[f"p{i}"] = list(last)  # `field` is one of the fixed names above
    args["p_max"] = [*TOOL_AVERAGES["avg_patterns"]]
    result = cur.execute(_TOOL.format(averages=", ".join(averages), cond=cond), args)
    columns = [column[0] for column in result.description or ()]
    row = dict(zip(columns, result.fetchall()[0], strict=True))
    return {
        "sample_count": row["sample_count"] or 0,
        "avg_embeddings": row["avg_embeddings"] or 0.0,
        "total_embeddings": number(totals["total_embeddings"]),
        "avg_cache_hit_rate": row["avg_cache_hit_rate"] or 0.0,
        "avg_tokens_saved": row["avg_tokens_saved"] or 0.0,
        "total_tokens_saved": number(totals["tokens_saved"]),
        "total_compressions": number(totals["total_compressions"]),
        "avg_compression_ratio": row["avg_compression_ratio"] or 0.0,
        "avg_quality_score": row["avg_quality_score"] or 0.0,
        "avg_patterns": row["avg_patterns"] or 0.0,
        "max_patterns": number(row["max_patterns"]) if row["max_patterns"] is not None else 0,
    }
