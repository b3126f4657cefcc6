"""The writer's map of known series: their ids, resolved per column, never per row.

Rows arrive with the series' strings (tenant, tool, session, source, metric, canonical
labels JSON). Rows of the same series are found per column (`group_rows`), and only one
key per distinct series is looked up here: a tick of 10,000 samples costs at most 10,000
dict look-ups, a bulk push of one series one. New series get the next ids; they enter the
map only once their transaction commits (`confirm`), so a failed write leaves it as it was.
"""

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.labels import from_json, text_form, to_json
from schemas.rows import SampleRow
from schemas.series_migration import SERIES_KEYS_SCHEMA

KEY_COLUMNS = ("tenant_id", "tool_id", "session_id", "source", "metric", "labels")
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
    new_keys: list["SeriesKey"]
    new_tenants: Counter[str]
    skipped: int  # rows dropped because their new series were over the limit
    segments: Sequence["Segment"] = ()  # to remember once committed (`Segments`)


Prefix = tuple[object, ...]  # a run's tenant, tool, session and source
Run = tuple[Prefix, pa.Array, pa.Array]  # rows of one source, as a scrape gives them
Segment = tuple[Prefix, pa.Array, pa.Array, np.ndarray]  # a run and its rows' series ids
_PREFIX = KEY_COLUMNS[:4]
_NO_SERIES = pa.Table.from_pylist([], schema=SERIES_KEYS_SCHEMA)
SEGMENT_ROWS = 1_000  # tables at least this long look in the segment cache
MAX_SEGMENTS = 100_000
MIN_RUN = 4  # rows per run, on average, for a table to be taken as runs


class Segments:
    """The series ids of each source's last run of rows: a tick whose source exposes the
    same names and labels in the same order as last time (the usual case) takes its ids
    from here, compared per column (Arrow), with no key built or looked up per series,
    as Prometheus's scrape cache does. Only committed runs are remembered."""

    def __init__(self) -> None:
        self._runs: dict[Prefix, tuple[pa.Array, pa.Array, np.ndarray]] = {}

    def clear(self) -> None:
        self._runs.clear()

    def remember(self, segments: Sequence[Segment]) -> None:
        if len(self._runs) + len(segments) > MAX_SEGMENTS:
            self._runs.clear()
        for prefix, metric, labels, ids in segments:
            # Copies: a slice would keep its whole tick's columns alive.
            self._runs[prefix] = (pa.concat_arrays([metric]), pa.concat_arrays([labels]), ids)

    def lookup(self, table: pa.Table) -> tuple[np.ndarray, list[tuple[Run, int, int]]] | None:
        """Each row's id where its run is remembered unchanged (-1 elsewhere), and the
        runs that are not, with their rows; None when the rows are not in runs of one
        source."""
        n = table.num_rows
        head = _codes(table.column("source").slice(0, 4 * SEGMENT_ROWS))
        if np.count_nonzero(head[1:] != head[:-1]) * MIN_RUN > len(head):
            return None  # a push sorted by time, not a tick: decided on its first rows
        change = np.zeros(n, bool)
        change[0] = True
        codes = []
        for name in ("source", *(c for c in _PREFIX if c != "source")):  # the likeliest first
            column = _codes(table.column(name))
            change[1:] |= column[1:] != column[:-1]
            if np.count_nonzero(change) * MIN_RUN > n:  # runs this short are not a scrape's
                return None
            codes.append((name, column))
        codes.sort(key=lambda named: _PREFIX.index(named[0]))
        starts = np.flatnonzero(change)
        ends = np.append(starts[1:], n)
        values = [_values(table.column(name)) for name in _PREFIX]
        metric = _plain(table.column("metric"))
        labels = _plain(table.column("labels"))
        ids = np.full(n, -1, np.int64)
        missed: list[tuple[Run, int, int]] = []
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            prefix = tuple(v[int(c[start])] for v, (_, c) in zip(values, codes, strict=True))
            names, pairs = metric.slice(start, end - start), labels.slice(start, end - start)
            run = self._runs.get(prefix)
            if run is not None and run[0].equals(names) and run[1].equals(pairs):
                ids[start:end] = run[2]
            else:
                missed.append(((prefix, names, pairs), start, end))
        return ids, missed


def _values(column: pa.ChunkedArray) -> list[object]:
    """The values `_codes` numbers (NULL last)."""
    array = column.combine_chunks()
    if not pa.types.is_dictionary(array.type) or array.dictionary.null_count:
        array = pc.dictionary_encode(
            array.dictionary_decode() if pa.types.is_dictionary(array.type) else array,
            null_encoding="encode",
        )
    return [*array.dictionary.to_pylist(), None]


def _plain(column: pa.ChunkedArray) -> pa.Array:
    array = column.combine_chunks()
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


SeriesKey = str  # the KEY_COLUMNS values of one series, joined (see `series_keys`)
# Names and labels never hold control characters (schemas.models.Label; labels travel as
# JSON, which escapes them), so this separator cannot make two keys one.
_SEP = "\x1f"


def series_keys(heads: pa.Table) -> list[SeriesKey]:
    """One key per row of `heads` (KEY_COLUMNS): `=value` per column (`!` for NULL),
    joined by _SEP, built in Arrow: a tick's 50,000 series cost one string each."""
    parts = []
    for name in KEY_COLUMNS:
        column = heads.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(pa.string())
        marked = pc.binary_join_element_wise(pa.scalar("="), column, "")
        parts.append(pc.fill_null(marked, "!") if column.null_count else marked)
    keys: list[str] = pc.binary_join_element_wise(*parts, _SEP).to_pylist()
    return keys


def _key(values: tuple[object, ...]) -> SeriesKey:
    """`series_keys` for one row of Python values."""
    return _SEP.join("!" if v is None else f"={v}" for v in values)


_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd, so each step is a bijection of its input


def _codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Each row's position in the column's dictionary (NULL is a value of its own)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_dictionary(array.type) or array.dictionary.null_count:
        array = pc.dictionary_encode(
            array.dictionary_decode() if pa.types.is_dictionary(array.type) else array,
            null_encoding="encode",
        )
    indices = array.indices
    if indices.null_count:  # a NULL row has no index: it gets one past the dictionary
        indices = pc.fill_null(indices, len(array.dictionary))
    # A dictionary may hold a value twice (two codes, one value): `resolve` maps such
    # groups to one series by their values.
    return np.asarray(indices.to_numpy(zero_copy_only=False), dtype=np.uint64)


def group_rows(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Rows with the same KEY_COLUMNS values, per column and never per row: each row's
    group (numbered in order of first appearance) and each group's first row.

    Each column is dictionary-encoded, the codes are mixed into one 64-bit number per row
    and that is encoded again. Two different keys mixing to the same number is checked
    for (every row must have its group's first row's codes), and then grouped exactly
    another way, so the answer never depends on luck."""
    n = table.num_rows
    codes = [
        _codes(table.column(name)) for name in KEY_COLUMNS if table.column(name).null_count < n
    ]  # fmt: skip  (all NULL: one value)
    mixed = np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):
        for column in codes:
            mixed = mixed * _MIX + column + np.uint64(1)
    group = np.asarray(pc.dictionary_encode(pa.array(mixed)).indices.to_numpy(), np.int64)
    seen = np.maximum.accumulate(group)
    new = np.ones(n, bool)
    new[1:] = group[1:] > seen[:-1]
    firsts = np.flatnonzero(new)
    if all(np.array_equal(column, column[firsts][group]) for column in codes):
        return group, firsts
    return _group_exactly(table)


def _group_exactly(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """`group_rows` by the key values themselves (slower; only after a mixing collision)."""
    ids: dict[tuple[object, ...], int] = {}
    columns = [table.column(name).to_pylist() for name in KEY_COLUMNS]
    group = np.array([ids.setdefault(key, len(ids)) for key in zip(*columns, strict=True)],
                     np.int64)  # fmt: skip
    firsts = np.zeros(len(ids), np.int64)
    firsts[group[::-1]] = np.arange(len(group) - 1, -1, -1)
    return group, firsts


class SeriesIndex:
    """Series key → id for every stored series, with per-tenant counts."""

    def __init__(
        self, max_per_tenant: int = DEFAULT_MAX_SERIES_PER_TENANT, segment_rows: int = SEGMENT_ROWS
    ) -> None:
        self.max_per_tenant = max_per_tenant
        self._segment_rows = segment_rows  # tables at least this long use `Segments`
        self._ids: dict[SeriesKey, int] = {}
        self._per_tenant: Counter[str] = Counter()
        self._next = 1
        self._segments = Segments()
        self.cached_rows = 0  # rows whose ids came from `Segments`, since start

    def __len__(self) -> int:
        return len(self._ids)

    def load(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read every stored series (at the writer's start)."""
        self._ids.clear()
        self._per_tenant.clear()
        self._segments.clear()
        top = 0
        for sid, tenant, tool, session, source, metric, labels in con.execute(_LOAD).fetchall():
            labels_json = to_json(tuple(sorted(labels.items())))
            self._ids[_key((tenant, tool, session, source, metric, labels_json))] = sid
            self._per_tenant[tenant] += 1
            top = max(top, sid)
        self._next = top + 1

    def known(self, row: SampleRow) -> int | None:
        """The id of `row`'s series if it is stored, else None."""
        key = (row.tenant_id, row.tool_id, row.session_id, row.source, row.metric, row.labels)
        return self._ids.get(_key(key))

    def resolve(
        self, table: pa.Table, drop_over_limit: bool = False, before: Sequence[Resolved] = ()
    ) -> Resolved:
        """The series id of every row of `table` (KEY_COLUMNS), and the new series.
        Over a tenant's limit: TooManySeries, or with `drop_over_limit` (a scrape) those
        rows are left out and counted. `before`: batches resolved earlier in the same
        transaction, not yet confirmed (their new series are known to this one)."""
        looked = (
            None if before or table.num_rows < self._segment_rows else self._segments.lookup(table)
        )
        if looked is None:
            return self._resolve(table, drop_over_limit, before)
        ids, missed = looked
        self.cached_rows += int((ids >= 0).sum())
        if not missed:
            return Resolved(pa.array(ids), None, _NO_SERIES, [], Counter(), 0)
        miss = ids < 0
        rest = self._resolve(table.filter(pa.array(miss)), drop_over_limit, ())
        if rest.keep is None:
            ids[miss] = rest.ids.to_numpy()
        else:
            ids[np.flatnonzero(miss)[rest.keep]] = rest.ids.to_numpy()
        keep = None if rest.keep is None else ids >= 0
        segments = [(*run, ids[start:end].copy()) for run, start, end in missed
                    if (ids[start:end] >= 0).all()]  # fmt: skip
        kept = ids if keep is None else ids[keep]
        return rest._replace(ids=pa.array(kept), keep=keep, segments=segments)

    def _resolve(
        self, table: pa.Table, drop_over_limit: bool, before: Sequence[Resolved]
    ) -> Resolved:
        n = table.num_rows
        if n == 0:
            empty = pa.Table.from_pylist([], schema=SERIES_KEYS_SCHEMA)
            return Resolved(pa.array([], pa.int64()), None, empty, [], Counter(), 0)
        group, firsts = group_rows(table)
        heads = table.select(list(KEY_COLUMNS)).take(pa.array(firsts))
        keys = series_keys(heads)
        ids = np.empty(len(keys), np.int64)
        new_rows: list[int] = []  # positions in `keys`
        new_tenants: Counter[str] = Counter()
        pending: dict[SeriesKey, int] = {}  # new in this transaction, not yet confirmed
        next_id = self._next
        for earlier in before:
            ids_before = earlier.new.column("id").to_pylist()
            pending.update(zip(earlier.new_keys, ids_before, strict=True))
            new_tenants.update(earlier.new_tenants)
            next_id = max([next_id, *(i + 1 for i in ids_before)])
        counted = Counter(new_tenants)  # what `before` brought, not part of this batch
        for i, key in enumerate(keys):
            sid = self._ids.get(key)
            if sid is None:
                sid = pending.get(key)
            if sid is not None:
                ids[i] = sid
                continue
            tenant = key.split(_SEP, 1)[0][1:]  # the first part is "=<tenant_id>"
            if self._per_tenant[tenant] + new_tenants[tenant] >= self.max_per_tenant:
                if not drop_over_limit:
                    raise TooManySeries(tenant, self.max_per_tenant)
                ids[i] = -1
                continue
            new_tenants[tenant] += 1
            ids[i] = pending[key] = next_id
            next_id += 1
            new_rows.append(i)
        row_ids = ids[group]
        keep, skipped = None, 0
        if (ids < 0).any():
            keep = row_ids >= 0
            skipped = int(n - keep.sum())
            row_ids = row_ids[keep]
        new = self._new_series(heads, new_rows, ids)
        new_tenants.subtract(counted)
        return Resolved(pa.array(row_ids, pa.int64()), keep, new,
                        [keys[i] for i in new_rows], +new_tenants, skipped)  # fmt: skip

    def _new_series(self, heads: pa.Table, rows: list[int], ids: np.ndarray) -> pa.Table:
        """series_keys rows for the groups `rows` of `heads` (one row per group)."""
        if not rows:
            return pa.Table.from_pylist([], schema=SERIES_KEYS_SCHEMA)
        picked = heads.take(pa.array(rows))
        picked = pa.table({c: picked.column(c).cast(pa.string()) for c in KEY_COLUMNS})
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
        """The series of `resolved` are committed: remember them (and its runs)."""
        self._segments.remember(resolved.segments)
        if not resolved.new_keys:  # the usual push: nothing new (and no Arrow calls for it)
            return
        for key, sid in zip(resolved.new_keys, resolved.new.column("id").to_pylist(), strict=True):
            self._ids[key] = sid
        self._per_tenant.update(resolved.new_tenants)
        if resolved.new.num_rows:
            self._next = max(self._next, int(max(resolved.new.column("id").to_pylist())) + 1)
