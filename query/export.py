"""`omnimetrics export`: samples in a time range as Parquet files partitioned by day."""

from datetime import datetime
from pathlib import Path

from query.notebook import connect

_COPY = """
COPY (
    SELECT seq, batch, ts, tenant_id, tool_id, session_id, source, metric, labels, kind, value,
           strftime(ts AT TIME ZONE 'UTC', '%Y-%m-%d') AS day
    FROM samples WHERE ts >= $start AND ts < $end {tenant}
    ORDER BY seq
) TO '{out}' (FORMAT PARQUET, PARTITION_BY (day), OVERWRITE_OR_IGNORE)
"""


def export(db_path: str | Path, start: datetime, end: datetime, out: Path,
           tenant_id: str | None = None) -> int:  # fmt: skip
    """Write samples with `start <= ts < end` under `out/day=YYYY-MM-DD/`; returns the count."""
    con = connect(db_path)
    try:
        params: dict[str, object] = {"start": start, "end": end}
        tenant = ""
        if tenant_id is not None:
            tenant, params["tenant"] = "AND tenant_id = $tenant", tenant_id
        (count,) = con.execute(
            f"SELECT count(*) FROM samples WHERE ts >= $start AND ts < $end {tenant}", params
        ).fetchall()[0]
        out.mkdir(parents=True, exist_ok=True)
        target = str(out).replace("'", "''")  # COPY takes its path as a literal
        con.execute(_COPY.format(tenant=tenant, out=target), params)
        return int(count)
    finally:
        con.close()
