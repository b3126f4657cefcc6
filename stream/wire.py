"""Batches between processes (the Redis Stream's entries): a batch's rows with their
deltas, by column, in MessagePack; the strings of its series apart, once per series
(`series_bytes`), as the store keeps them.

An entry: `{"v", "batch", "seq", "seq_of", "ts_us", "series_id", "kinds", "kind",
"value", "delta", "has_delta", "failures"}`, each column the raw little-endian bytes of
its NumPy array (`kind` indexes `kinds`), a failed scrape `[ts_us, tenant_id, tool_id,
source, error]`.
"""

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stream.batches import Batch, Block, ScrapeFailure, Series

VERSION = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class WireError(ValueError):
    """An entry this version cannot read."""


def encode_batch(batch: Batch) -> bytes:
    """`batch` as an entry (its series by id only)."""
    block, lo, hi = batch.block, batch.lo, batch.hi
    kinds = pc.dictionary_encode(block.kind.slice(lo, hi - lo))
    return msgspec.msgpack.encode({
        "v": VERSION,
        "batch": batch.batch,
        "seq": batch.last_seq,
        "seq_of": _bytes(block.seq[lo:hi], np.int64),
        "ts_us": _bytes(block.ts_us[lo:hi], np.int64),
        "series_id": _bytes(block.series_id[lo:hi], np.int64),
        "kinds": kinds.dictionary.to_pylist(),
        "kind": _bytes(kinds.indices.to_numpy(zero_copy_only=False), np.int32),
        "value": _bytes(block.value[lo:hi], np.float64),
        "delta": _bytes(block.delta[lo:hi], np.float64),
        "has_delta": _bytes(block.has_delta[lo:hi], np.bool_),
        "failures": [[(f.ts - _EPOCH) // timedelta(microseconds=1), f.tenant_id, f.tool_id,
                      f.source, f.error] for f in batch.failures],
    })  # fmt: skip


def batch_series(batch: Batch) -> list[int]:
    """The ids of the series `batch` holds."""
    return [int(i) for i in np.unique(batch.block.series_id[batch.lo : batch.hi])]


def series_bytes(series: Series) -> bytes:
    return msgspec.msgpack.encode([*series[:5], [list(pair) for pair in series.labels]])


def decode_series(data: bytes) -> Series:
    tenant, tool, session, source, metric, labels = msgspec.msgpack.decode(data)
    return Series(tenant, tool, session, source, metric, tuple(tuple(p) for p in labels))


def decode_batch(data: bytes, series: Mapping[int, Series]) -> Batch:
    """The batch of an entry; `series` holds (at least) each of its series."""
    entry: dict[str, Any] = msgspec.msgpack.decode(data)
    if entry.get("v") != VERSION:
        raise WireError(f"an entry of version {entry.get('v')!r}; this reads {VERSION}")
    seq = np.frombuffer(entry["seq_of"], "<i8").astype(np.int64)
    n = len(seq)
    kinds = pa.array(entry["kinds"], pa.string())
    block = Block(
        seq,
        np.full(n, entry["batch"], np.int64),
        np.frombuffer(entry["ts_us"], "<i8").astype(np.int64),
        np.frombuffer(entry["series_id"], "<i8").astype(np.int64),
        kinds.take(pa.array(np.frombuffer(entry["kind"], "<i4"))),
        np.frombuffer(entry["value"], "<f8").astype(np.float64),
        np.frombuffer(entry["delta"], "<f8").astype(np.float64),
        np.frombuffer(entry["has_delta"], np.bool_).copy(),
        series if isinstance(series, dict) else dict(series),
    )
    failures = [
        ScrapeFailure(entry["batch"], _EPOCH + timedelta(microseconds=ts), tenant, tool, source,
                      error)
        for ts, tenant, tool, source, error in entry["failures"]
    ]  # fmt: skip
    return Batch(entry["batch"], entry["seq"], block, 0, n, failures)


def _bytes(values: np.ndarray, dtype: Any) -> bytes:
    return np.ascontiguousarray(values, np.dtype(dtype).newbyteorder("<")).tobytes()
