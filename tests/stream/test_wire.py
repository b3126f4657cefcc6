"""Batches through the wire format (the Redis Stream's entries) are the batches they were:
rows, deltas, kinds, labels, failed scrapes, and the messages every filter gets."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from ingest.writer import Writer
from schemas.db import Database
from schemas.labels import to_json
from schemas.rows import SampleRow, ScrapeRow
from schemas.signals import AppendSignal
from stream.batches import KnownSeries, read_batches
from stream.encode import Filter, encode_batches
from stream.wire import (
    WireError,
    batch_series,
    decode_batch,
    decode_page,
    decode_series,
    encode_batch,
    encode_page,
    series_bytes,
)

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 11, 20, tzinfo=UTC)


async def test_a_batch_through_the_wire_is_the_batch_it_was(tmp_path: Path) -> None:
    db = Database(tmp_path / "w.duckdb")
    writer = Writer(db, AppendSignal())
    await writer.start()
    labels = ["{}", to_json((("code", "200"),)), to_json((("path", 'a"b\\c'),))]
    for b in range(5):
        ts = T0 + timedelta(seconds=b, microseconds=7)
        await writer.append(
            [SampleRow(ts, "acme" if i % 2 else "local", "t" if i % 3 else None,
                       "s" if i == 4 else None, "src", f"m{i % 4}.x" if i % 5 else "é",
                       ("counter", "gauge", "delta", "untyped")[i % 4],
                       [float(b * 10 - i), float("nan"), float("inf"), -0.0, 1e308][i % 5],
                       labels[i % 3])
             for i in range(9)],
            [ScrapeRow(ts, "local", "t", "src", b % 2 == 0, 0.1,
                       None if b % 2 == 0 else f"down {b}")],
        )  # fmt: skip
    await writer.close()
    batches = read_batches(db.cursor(), 0, 45, KnownSeries())
    db.close()
    assert len(batches) == 5
    for batch in batches:
        ids = batch_series(batch)
        # As a gateway gets them: the series' strings apart, then the entry.
        series = {i: decode_series(series_bytes(batch.block.series[i])) for i in ids}
        got = decode_batch(encode_batch(batch), series)
        assert (got.batch, got.last_seq, got.failures) == (batch.batch, batch.last_seq,
                                                           batch.failures)  # fmt: skip
        assert repr(got.rows) == repr(batch.rows)  # NaN too
        for flt in (Filter(), Filter("acme"), Filter(labels=(("code", "200"),)), Filter("x")):
            assert encode_batches([got], flt, "ep") == encode_batches([batch], flt, "ep")


def test_an_entry_of_another_version_is_refused_by_name() -> None:
    with pytest.raises(WireError, match="version 2"):
        decode_batch(msgspec.msgpack.encode({"v": 2}), {})


async def test_a_page_through_the_wire_is_the_page_it_was(tmp_path: Path) -> None:
    """Many batches, in one block or several (the live tail's, a page's), as one page."""
    db = Database(tmp_path / "p.duckdb")
    writer = Writer(db, AppendSignal())
    await writer.start()
    for b in range(6):
        ts = T0 + timedelta(seconds=b)
        await writer.append(
            [SampleRow(ts, "local", None, None, "src", f"m{i}", "counter", float(b + i),
                       to_json((("k", str(i)),)) if i % 2 else "{}") for i in range(b + 1)],
            [ScrapeRow(ts, "local", None, "other", False, 1.0, f"down {b}")] if b == 3 else [],
        )  # fmt: skip
    await writer.close()
    cur = db.cursor()
    together = read_batches(cur, 0, 21, KnownSeries())
    apart = read_batches(cur, 0, 6, KnownSeries()) + read_batches(cur, 6, 21, KnownSeries())
    db.close()
    for batches in (together, apart, together[2:3], []):
        got, cursor, more = decode_page(encode_page(batches, "ep:21", True))
        assert (cursor, more) == ("ep:21", True)
        assert [(b.batch, b.last_seq, b.failures) for b in got] == [
            (b.batch, b.last_seq, b.failures) for b in batches
        ]
        assert [r for b in got for r in b.rows] == [r for b in batches for r in b.rows]
        assert encode_batches(got, Filter(), "ep") == encode_batches(batches, Filter(), "ep")
