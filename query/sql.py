"""History queries. Values are always bound as `$name`; the only text ever joined into
SQL is the fixed fragments below, chosen by which filters were given."""

from datetime import datetime
from typing import Any

from schemas.models import SampleFilters

COLUMNS = "seq, ts, tenant_id, tool_id, session_id, source, metric, kind, value"
SERIES_KEY = "tenant_id, tool_id, session_id, source, metric"

_FILTER_CLAUSES = {
    "metric": "metric = $metric",
    "source": "source = $source",
    "tenant_id": "tenant_id = $tenant_id",
    "tool_id": "tool_id = $tool_id",
    "session_id": "session_id = $session_id",
}


def where(
    filters: SampleFilters, start: datetime | None = None, end: datetime | None = None
) -> tuple[str, dict[str, Any]]:
    """A WHERE clause and its parameters for the filters given (`start` inclusive)."""
    clauses, params = ["TRUE"], {}
    for name, clause in _FILTER_CLAUSES.items():
        value = getattr(filters, name)
        if value is not None:
            clauses.append(clause)
            params[name] = value
    if start is not None:
        clauses.append("ts >= $start")
        params["start"] = start
    if end is not None:
        clauses.append("ts < $end")
        params["end"] = end
    return " AND ".join(clauses), params


def series_sql(cond: str) -> str:
    return f"SELECT {COLUMNS} FROM samples WHERE {cond} ORDER BY seq LIMIT $limit"


def latest_sql(cond: str) -> str:
    return (
        f"SELECT {COLUMNS} FROM samples WHERE {cond} "
        f"QUALIFY row_number() OVER (PARTITION BY {SERIES_KEY} ORDER BY ts DESC, seq DESC) = 1 "
        "ORDER BY tenant_id, source, metric, tool_id NULLS FIRST, session_id NULLS FIRST"
    )


def increase_sql(cond: str, labels: list[str]) -> str:
    """Reset-aware sums of deltas per step-aligned bucket and group, gap-filled with 0.

    `labels` come from an allow-list (schemas.models.GROUP_LABELS), never from input text.
    Buckets are aligned to multiples of the step since the Unix epoch, in UTC, whatever
    the session's time zone. Deltas come from the exact window macro, so the first sample
    inside the window gets its true delta from the one before it.
    """
    cols = ", ".join(labels)
    sel = "".join(f", {c}" for c in labels)
    joined = "".join(f" AND a.{c} IS NOT DISTINCT FROM g.{c}" for c in labels)
    groups = f"SELECT DISTINCT {cols} FROM agg" if labels else "SELECT 1 AS one"
    return f"""
WITH d AS (
    SELECT CAST(floor(epoch(ts) / $step) AS BIGINT) AS b{sel}, delta
    FROM sample_deltas_between($start, $end)
    WHERE {cond} AND delta IS NOT NULL
),
agg AS (SELECT b{sel}, sum(delta) AS value FROM d GROUP BY ALL),
buckets AS (SELECT unnest(range($first, $last + 1)) AS b),
groups AS ({groups})
SELECT to_timestamp(k.b * $step) AS t{"".join(f", g.{c}" for c in labels)},
       coalesce(a.value, 0) AS value
FROM buckets k CROSS JOIN groups g
LEFT JOIN agg a ON a.b = k.b{joined}
ORDER BY k.b{"".join(f", g.{c} NULLS FIRST" for c in labels)}
"""
