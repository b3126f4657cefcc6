"""Pushed events: the body read under a size cap, validated whole, turned into rows."""

from collections.abc import AsyncIterator
from datetime import datetime

import orjson
import pyarrow as pa

from ingest.bulk import BULK_BYTES, Columns, decode
from ingest.events import Event
from ingest.fast_events import fast_events
from ingest.writer import EventKey, Pushed
from schemas.labels import NO_LABELS, to_json
from schemas.models import IngestBatch, IngestEvent
from schemas.rows import SampleRow

MAX_BODY_BYTES = 10 * 1024 * 1024
_TS = pa.timestamp("us", tz="UTC")


class BodyTooLarge(Exception):
    pass


class InvalidBody(Exception):
    """The body is not JSON at all; `ValidationError` covers JSON of the wrong shape."""


async def read_capped(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """The whole body, refusing as soon as it is known to exceed `limit` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        parts.append(chunk)
    return b"".join(parts)


def parse_events(body: bytes) -> list[Event] | Columns:
    """One event or `{"events": [...]}`; raises `InvalidBody` or `ValidationError`.
    Large bodies come back as columns when they are plainly valid (`ingest.bulk`)."""
    if len(body) >= BULK_BYTES:
        columns = decode(body)
        if columns is not None:
            return columns
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidBody(f"body is not valid JSON: {exc}") from None
    fast = fast_events(doc)
    if fast is not None:
        return fast
    if isinstance(doc, dict) and "events" in doc:
        return [Event.of(e) for e in IngestBatch.model_validate(doc).events]
    return [Event.of(IngestEvent.model_validate(doc))]


def columns_request(columns: Columns, now: datetime) -> Pushed:
    """What the writer takes for a push decoded into columns."""
    return Pushed(columns.at(pa.scalar(now, _TS)), columns.event, columns.keys())


def event_rows(events: list[Event], now: datetime) -> list[tuple[EventKey | None, list[SampleRow]]]:
    out: list[tuple[EventKey | None, list[SampleRow]]] = []
    for event in events:
        ts = event.ts or now
        key = (event.tenant_id, event.event_id) if event.event_id is not None else None
        labels = to_json(tuple(event.labels.items())) if event.labels else NO_LABELS
        rows = [
            SampleRow(
                ts,
                event.tenant_id,
                event.tool_id,
                event.session_id,
                event.source,
                metric,
                event.kind,
                value,
                labels,
            )  # fmt: skip
            for metric, value in event.metrics.items()
        ]
        out.append((key, rows))
    return out
