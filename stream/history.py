"""`GET /api/v1/batches`: the batches after a cursor, in seq order, paged, each with its
rows and their deltas as the stream computes them (CONTRACT.md "Gateways").

A page holds whole batches: at most `limit` of them and about `MAX_PAGE_ROWS` rows (one
batch larger than that is a page of its own). Its `cursor` is where the next page starts,
also when no row of the page passes the filter, so a caller pages on through batches it
cannot see; `more` says whether the stream had batches after it when the page was read.
"""

from typing import Any, NamedTuple

import duckdb
import orjson

from schemas.labels import text_form
from schemas.nested import json_value
from schemas.times import rfc3339
from stream.batches import Batch, KnownSeries, batch_end, read_batches
from stream.encode import Filter

DEFAULT_LIMIT = 1_000
MAX_PAGE_ROWS = 100_000

_BATCH_LASTS = """
SELECT max(seq) FROM points WHERE seq > $after AND seq <= $probe
GROUP BY batch ORDER BY batch LIMIT $limit
"""


class BatchesPage(NamedTuple):
    batches: list[Batch]
    end: int  # the seq the next page starts after (a batch boundary)


def read_batches_after(
    cur: duckdb.DuckDBPyConnection,
    after: int,
    head: int,
    known: KnownSeries,
    limit: int = DEFAULT_LIMIT,
    max_rows: int = MAX_PAGE_ROWS,
) -> BatchesPage:
    """The page after seq `after` up to `head` (a batch boundary the stream has reached)."""
    probe = min(after + max_rows, head)
    if probe <= after:
        return BatchesPage([], after)
    lasts = [last for (last,) in cur.execute(
        _BATCH_LASTS, {"after": after, "probe": probe, "limit": limit + 1}).fetchall()]  # fmt: skip
    if len(lasts) > limit:
        end = lasts[limit - 1]
    elif probe >= head:
        end = probe
    else:  # the last batch may go on past the probe
        end = batch_end(cur, probe)
        if end > probe and len(lasts) > 1:
            end = lasts[-2]
    return BatchesPage(read_batches(cur, after, end, known), end)


def page_json(page: BatchesPage, head: int, flt: Filter, epoch: str) -> bytes:
    """The page as the route answers it."""
    batches = [out for out in (_batch(b, flt, epoch) for b in page.batches) if out is not None]
    return orjson.dumps(
        {"batches": batches, "cursor": f"{epoch}:{page.end}", "more": page.end < head}
    )


def _batch(batch: Batch, flt: Filter, epoch: str) -> dict[str, Any] | None:
    """A batch's rows (and failed scrapes) that `flt` sees; None when it sees none."""
    block = batch.block
    rows = []
    for row in block.rows(batch.lo, batch.hi):
        if not flt.matches(row.tenant_id, row.tool_id, row.session_id, row.labels):
            continue
        suffix = len(text_form("", row.labels))  # `metric` is the bare name, as the API's
        rows.append({
            "seq": row.seq, "timestamp": rfc3339(row.ts), "tenant_id": row.tenant_id,
            "tool_id": row.tool_id, "session_id": row.session_id, "source": row.source,
            "metric": row.metric[: len(row.metric) - suffix] if suffix else row.metric,
            "labels": dict(row.labels), "kind": row.kind, "value": json_value(row.value),
            "delta": None if row.delta is None else json_value(row.delta),
        })  # fmt: skip
    failures = [
        {"timestamp": rfc3339(f.ts), "tenant_id": f.tenant_id, "tool_id": f.tool_id,
         "source": f.source, "error": f.error}
        for f in batch.failures if flt.matches(f.tenant_id, f.tool_id, None)
    ]  # fmt: skip
    if not rows and not failures:
        return None
    return {
        "batch": batch.batch,
        "seq": batch.last_seq,
        "cursor": f"{epoch}:{batch.last_seq}",
        "timestamp": rfc3339(batch.ts),
        "rows": rows,
        "failures": failures,
    }
