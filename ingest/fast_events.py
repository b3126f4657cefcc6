"""Small push bodies checked without pydantic where they are plainly valid (large ones
are checked per column: `ingest.bulk`).

pydantic validates an event in about 12 us here (its `AfterValidator`s and the counter
check run in Python per event): most of a 10,000-event push. This checks the common shape
directly, in one loop, and builds the same `Event`s the models would give. It only
ever accepts what the models accept: anything it is not sure of (labels, a name that is
not plainly printable, an int too large for a float, a time `datetime` does not parse as
the model would) makes it answer None, and the body goes through pydantic, which gives
the documented error messages. A property test compares the two on random bodies.
"""

import math
import re
from datetime import datetime

from ingest.events import Event
from schemas.models import (
    EARLIEST,
    LATEST,
    MAX_EVENTS_PER_REQUEST,
    IngestEvent,
)

_FIELDS = frozenset(IngestEvent.model_fields)
_KINDS = frozenset(("counter", "gauge", "delta", "untyped"))
_CUMULATIVE = frozenset(("counter", "untyped"))
_TENANT = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")
_OPTIONAL = ("tool_id", "session_id", "event_id")


def _label(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= 200 and value.isprintable()


def _event(doc: object) -> Event | None:
    if type(doc) is not dict or not doc.keys() <= _FIELDS or doc.get("labels") is not None:
        return None
    kind, source, metrics = doc.get("kind"), doc.get("source"), doc.get("metrics")
    if kind not in _KINDS or not _label(source) or type(metrics) is not dict or not metrics:
        return None
    values: dict[str, float] = {}
    cumulative = kind in _CUMULATIVE
    for name, raw in metrics.items():
        if not (0 < len(name) <= 1024 and name.isprintable()):
            return None
        if not name.isascii() and len(name.encode()) > 1024:
            return None
        if type(raw) is float:
            value = raw
        elif type(raw) is int and -(2**53) <= raw <= 2**53:
            value = float(raw)
        else:
            return None
        if not math.isfinite(value) or (cumulative and value < 0):
            return None
        values[name] = value
    tenant = doc.get("tenant_id", "local")
    if type(tenant) is not str or not _TENANT.fullmatch(tenant):
        return None
    for field in _OPTIONAL:
        if doc.get(field) is not None and not _label(doc[field]):
            return None
    ts = doc.get("ts")
    at: datetime | None = None
    if ts is not None:
        if type(ts) is not str or not _RFC3339.fullmatch(ts):
            return None
        try:
            at = datetime.fromisoformat(ts)
        except ValueError:  # shaped right, but no such time (a leap second, 30 February)
            return None
        if not EARLIEST <= at < LATEST:
            return None
    return Event(str(source), kind, values, None, tenant, doc.get("tool_id"),
                 doc.get("session_id"), doc.get("event_id"), at, frozenset(doc))  # fmt: skip


def fast_events(doc: object) -> list[Event] | None:
    """The events of a push body (one event or `{"events": [...]}`), or None when any part
    needs pydantic to decide."""
    if type(doc) is dict and "events" in doc:
        batch = doc["events"]
        if len(doc) != 1 or type(batch) is not list:
            return None
        if not 0 < len(batch) <= MAX_EVENTS_PER_REQUEST:
            return None
        out = []
        for item in batch:
            event = _event(item)
            if event is None:
                return None
            out.append(event)
        return out
    event = _event(doc)
    return [event] if event is not None else None
