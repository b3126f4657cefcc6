"""The writer's map of known series: their ids, resolved per column, never per row.

Rows arrive with the series' strings (tenant, tool, session, source, metric, canonical
labels JSON). Each row's key is those joined into one string (vectorized in Arrow), the
key column is dictionary-encoded, and only its distinct values are looked up here: a
tick of 10,000 samples from one source costs a few thousand dict look-ups at most, a
bulk push of one series one. New series get the next ids; they enter the map only once
their transaction commits (`confirm`), so a failed write leaves it as it was.
"""

from collections import Counter
from typing import NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.labels import from_json, text_form, to_json
from schemas.series_migration import SERIES_KEYS_SCHEMA

KEY_COLUMNS = ("tenant_id", "tool_id", "session_id", "source", "metric", "labels")
# Names and labels never hold control characters (schemas.models.Label), so this
# separator cannot make two keys one.
_SEP = "\x1f"
_LOAD = "SELECT id, tenant_id, tool_id, session_id, source, metric, labels FROM series_keys"

DEFAULT_MAX_SERIES_PER_TENANT = 1_000_000


class TooManySeries(Exception):
    """A write would give a tenant more series than its limit."""

    def __init__(self, tenant_id: str, limit: int) -> None:
        super().__init__(
            f"tenant {tenant_id!r} would have more than {limit} series "
            "(OMNIMETRICS_MAX_SERIES_PER_TENANT)"
        )
        self.tenant_id = tenant_id
        self.limit = limit


class Resolved(NamedTuple):
    ids: pa.Array  # one series id per row kept
    keep: np.ndarray | None  # rows kept (None: all); rows of series over the limit are not
    new: pa.Table  # series_keys rows to insert with these points
    new_keys: list[str]
    new_tenants: Counter[str]
    skipped: int  # rows dropped because their new series were over the limit


def _key(parts: tuple[object, ...]) -> str:
    return _SEP.join("!" if p is None else f"={p}" for p in parts)


def key_column(table: pa.Table) -> pa.Array:
    """Each row's series key: `=value` per column (`!` for NULL), joined by _SEP."""
    cols = []
    for name in KEY_COLUMNS:
        column = table.column(name)
        marked = pc.binary_join_element_wise(pa.scalar("="), column, "")
        cols.append(pc.fill_null(marked, "!") if column.null_count else marked)
    joined = pc.binary_join_element_wise(*cols, _SEP)
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


class SeriesIndex:
    """Series key → id for every stored series, with per-tenant counts."""

    def __init__(self, max_per_tenant: int = DEFAULT_MAX_SERIES_PER_TENANT) -> None:
        self.max_per_tenant = max_per_tenant
        self._ids: dict[str, int] = {}
        self._per_tenant: Counter[str] = Counter()
        self._next = 1

    def __len__(self) -> int:
        return len(self._ids)

    def load(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read every stored series (at the writer's start)."""
        self._ids.clear()
        self._per_tenant.clear()
        top = 0
        for sid, tenant, tool, session, source, metric, labels in con.execute(_LOAD).fetchall():
            labels_json = to_json(tuple(sorted(labels.items())))
            self._ids[_key((tenant, tool, session, source, metric, labels_json))] = sid
            self._per_tenant[tenant] += 1
            top = max(top, sid)
        self._next = top + 1

    def resolve(self, table: pa.Table, drop_over_limit: bool = False) -> Resolved:
        """The series id of every row of `table` (KEY_COLUMNS), and the new series.
        Over a tenant's limit: TooManySeries, or with `drop_over_limit` (a scrape) those
        rows are left out and counted."""
        n = table.num_rows
        if n == 0:
            empty = pa.Table.from_pylist([], schema=SERIES_KEYS_SCHEMA)
            return Resolved(pa.array([], pa.int64()), None, empty, [], Counter(), 0)
        encoded = key_column(table).dictionary_encode()
        distinct = encoded.dictionary.to_pylist()
        ids = np.empty(len(distinct), np.int64)
        new_rows: list[int] = []  # positions in `distinct`
        new_tenants: Counter[str] = Counter()
        refused = np.zeros(len(distinct), bool)
        firsts: np.ndarray | None = None
        next_id = self._next
        for i, key in enumerate(distinct):
            sid = self._ids.get(key)
            if sid is not None:
                ids[i] = sid
                continue
            if firsts is None:  # the first row of each distinct key, for its strings
                indices = encoded.indices.to_numpy()
                order = np.argsort(indices, kind="stable")
                starts = np.searchsorted(indices[order], np.arange(len(distinct)))
                firsts = order[starts]
            tenant = str(table.column("tenant_id")[int(firsts[i])].as_py())
            if self._per_tenant[tenant] + new_tenants[tenant] >= self.max_per_tenant:
                if not drop_over_limit:
                    raise TooManySeries(tenant, self.max_per_tenant)
                refused[i] = True
                ids[i] = -1
                continue
            new_tenants[tenant] += 1
            ids[i] = next_id
            next_id += 1
            new_rows.append(i)
        row_ids = ids[encoded.indices.to_numpy()]
        keep = None
        skipped = 0
        if refused.any():
            keep = row_ids >= 0
            skipped = int(n - keep.sum())
            row_ids = row_ids[keep]
        new = self._new_series(table, firsts, new_rows, ids)
        return Resolved(
            pa.array(row_ids, pa.int64()), keep, new, [distinct[i] for i in new_rows],
            new_tenants, skipped,
        )  # fmt: skip

    def _new_series(
        self, table: pa.Table, firsts: np.ndarray | None, rows: list[int], ids: np.ndarray
    ) -> pa.Table:
        if not rows or firsts is None:
            return pa.Table.from_pylist([], schema=SERIES_KEYS_SCHEMA)
        picked = table.select(list(KEY_COLUMNS)).take(pa.array(firsts[rows]))
        labels = [from_json(text) for text in picked.column("labels").to_pylist()]
        metrics = picked.column("metric").to_pylist()
        return pa.Table.from_arrays(
            [
                pa.array(ids[rows], pa.int64()),
                picked.column("tenant_id"),
                picked.column("tool_id"),
                picked.column("session_id"),
                picked.column("source"),
                picked.column("metric"),
                pa.array(
                    [list(pairs) for pairs in labels], SERIES_KEYS_SCHEMA.field("labels").type
                ),
                pa.array(
                    [text_form(m, pairs) for m, pairs in zip(metrics, labels, strict=True)],
                    pa.string(),
                ),  # fmt: skip
            ],
            schema=SERIES_KEYS_SCHEMA,
        )

    def confirm(self, resolved: Resolved) -> None:
        """The series of `resolved` are committed: remember them."""
        for key, sid in zip(resolved.new_keys, resolved.new.column("id").to_pylist(), strict=True):
            self._ids[key] = sid
        self._per_tenant.update(resolved.new_tenants)
        if resolved.new.num_rows:
            self._next = max(self._next, int(max(resolved.new.column("id").to_pylist())) + 1)
