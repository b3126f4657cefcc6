"""Batches between processes (the Redis Stream's entries, `/api/v1/batches` in
MessagePack): rows with their deltas, by column, in MessagePack; the strings of their
series apart (`series_bytes`: an entry names its series by id, the stream keeps their
strings once in a hash; a page of `/api/v1/batches` carries them).

Rows: `{"v", "seq_of", "batch_of", "ts_us", "series_id", "kinds", "kind", "value",
"delta", "has_delta", "failures"}`, each column the raw little-endian bytes of its NumPy
array (`kind` indexes `kinds`; `delta` means something only where `has_delta`), a failed
scrape `[batch, ts_us, tenant_id, tool_id, source, error]`.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stream.batches import Batch, Block, ScrapeFailure, Series, batches_of, runs_of, time_of, us_of

VERSION = 1


class WireError(ValueError):
    """An entry this version cannot read."""


def encode_batch(batch: Batch) -> bytes:
    """`batch` as an entry (its series by id only)."""
    return msgspec.msgpack.encode(rows_of([batch]))


def decode_batch(data: bytes, series: Mapping[int, Series]) -> Batch:
    """The batch of an entry; `series` holds (at least) each of its series."""
    batches = batches_of_rows(msgspec.msgpack.decode(data), series)
    if len(batches) != 1:
        raise WireError(f"an entry holds one batch, not {len(batches)}")
    return batches[0]


def rows_of(batches: Sequence[Batch]) -> dict[str, Any]:
    """The rows of `batches` (in seq order) by column, with their failed scrapes."""
    runs = [(batches[i].block, batches[i].lo, batches[j - 1].hi) for i, j in runs_of(batches)]

    def column(name: str, dtype: Any) -> bytes:
        parts = [getattr(block, name)[lo:hi] for block, lo, hi in runs]
        return _bytes(np.concatenate(parts) if parts else np.zeros(0, dtype), dtype)

    kind = [block.kind.slice(lo, hi - lo) for block, lo, hi in runs]
    kinds = pc.dictionary_encode(pa.concat_arrays(kind) if kind else pa.array([], pa.string()))
    return {
        "v": VERSION,
        "seq_of": column("seq", np.int64),
        "batch_of": column("batch", np.int64),
        "ts_us": column("ts_us", np.int64),
        "series_id": column("series_id", np.int64),
        "kinds": kinds.dictionary.to_pylist(),
        "kind": _bytes(kinds.indices.to_numpy(zero_copy_only=False), np.int32),
        "value": column("value", np.float64),
        "delta": column("delta", np.float64),
        "has_delta": column("has_delta", np.bool_),
        "failures": [[f.batch, us_of(f.ts), f.tenant_id, f.tool_id, f.source, f.error]
                     for b in batches for f in b.failures],
    }  # fmt: skip


def batches_of_rows(rows: dict[str, Any], series: Mapping[int, Series]) -> list[Batch]:
    """`rows_of`'s batches again, their rows in one block; `series` holds (at least)
    each of their series."""
    if rows.get("v") != VERSION:
        raise WireError(f"an entry of version {rows.get('v')!r}; this reads {VERSION}")

    def column(name: str, dtype: str) -> np.ndarray:
        return np.frombuffer(rows[name], dtype).astype(dtype[1:])

    kinds = pa.array(rows["kinds"], pa.string())
    block = Block(
        column("seq_of", "<i8"),
        column("batch_of", "<i8"),
        column("ts_us", "<i8"),
        column("series_id", "<i8"),
        kinds.take(pa.array(np.frombuffer(rows["kind"], "<i4"))),
        column("value", "<f8"),
        column("delta", "<f8"),
        np.frombuffer(rows["has_delta"], np.bool_).copy(),
        series if isinstance(series, dict) else dict(series),
    )
    failures: dict[int, list[ScrapeFailure]] = {}
    for batch, ts, tenant, tool, source, error in rows["failures"]:
        failure = ScrapeFailure(batch, time_of(ts), tenant, tool, source, error)
        failures.setdefault(batch, []).append(failure)
    return batches_of(block, failures)


def batch_series(batch: Batch) -> list[int]:
    """The ids of the series `batch` holds."""
    return [int(i) for i in np.unique(batch.block.series_id[batch.lo : batch.hi])]


def series_bytes(series: Series) -> bytes:
    return msgspec.msgpack.encode(_fields(series))


def decode_series(data: bytes) -> Series:
    return _series(msgspec.msgpack.decode(data))


def _fields(series: Series) -> list[Any]:
    return [*series[:5], [list(pair) for pair in series.labels]]


def _series(fields: list[Any]) -> Series:
    tenant, tool, session, source, metric, labels = fields
    return Series(tenant, tool, session, source, metric, tuple(tuple(p) for p in labels))


def _bytes(values: np.ndarray, dtype: Any) -> bytes:
    return np.ascontiguousarray(values, np.dtype(dtype).newbyteorder("<")).tobytes()


def encode_page(batches: Sequence[Batch], cursor: str, more: bool) -> bytes:
    """A page of `/api/v1/batches` in MessagePack: its rows, their series' strings, and
    where the next page starts."""
    info: dict[int, Series] = {}
    for b in batches:
        for i in batch_series(b):
            info.setdefault(i, b.block.series[i])
    series = [[i, _fields(s)] for i, s in info.items()]
    return msgspec.msgpack.encode(
        {"rows": rows_of(batches), "series": series, "cursor": cursor, "more": more}
    )


def decode_page(data: bytes) -> tuple[list[Batch], str, bool]:
    """`encode_page`'s batches, cursor and `more` again."""
    page: dict[str, Any] = msgspec.msgpack.decode(data)
    series = {i: _series(fields) for i, fields in page["series"]}
    return batches_of_rows(page["rows"], series), page["cursor"], page["more"]
