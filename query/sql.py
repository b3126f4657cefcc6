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
