"""Large push bodies decoded straight into columns.

A body of 10,000 events costs pydantic ~130 ms here and the per-event check of
`ingest.fast_events` ~50 ms, both one Python object and a dozen checks per event. This
decodes the body with msgspec (C: types, lengths, unknown fields, all in the decode) and
checks the rest per field, never per event: one regular-expression pass over each text
field's values joined, the times with Arrow, the numbers with NumPy.
Like the per-event check it accepts only what the models accept: anything it is not sure
of (labels, a time outside the plain RFC 3339 shape, a name with a control character)
makes it answer None, and the body goes through pydantic, which gives the documented
error messages. A property test compares it with the models on random bodies.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import chain
from operator import attrgetter
from typing import Annotated, Literal

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.staging import EventKey
from schemas.labels import MAX_NAME_BYTES, NO_LABELS
from schemas.models import EARLIEST, LATEST, MAX_EVENTS_PER_REQUEST
from schemas.rows import SAMPLE_SCHEMA

BULK_BYTES = 16 * 1024  # bodies at least this long are decoded here first

_Label = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_BYTES)]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TENANT = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_RFC3339 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$"
_TS = pa.timestamp("us", tz="UTC")
_CUMULATIVE = pa.array(["counter", "untyped"])


class _Event(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    source: _Label
    kind: Literal["counter", "gauge", "delta", "untyped"]
    metrics: Annotated[dict[_Name, float], msgspec.Meta(min_length=1)]
    labels: None = None  # labels go through the models (canonical form, limits)
    tenant_id: str | msgspec.UnsetType = msgspec.UNSET
    tool_id: _Label | None = None
    session_id: _Label | None = None
    event_id: _Label | None = None
    ts: str | None = None


class _Batch(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    events: Annotated[list[_Event], msgspec.Meta(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)]


_FIELDS = ("source", "kind", "metrics", "tenant_id", "tool_id", "session_id", "event_id", "ts")
_DECODE_BATCH = msgspec.json.Decoder(_Batch)
_DECODE_EVENT = msgspec.json.Decoder(_Event)


@dataclass(frozen=True)
class Columns:
    """One push request's samples as columns: `table` (SAMPLE_SCHEMA, times NULL where
    the event gave none), `event` each row's event, and per event its idempotency key and
    whether it named its tenant."""

    table: pa.Table
    event: np.ndarray
    event_ids: list[str | None]
    tenants: list[str]
    named: list[bool]

    def __len__(self) -> int:
        return len(self.tenants)

    def keys(self) -> list[EventKey | None]:
        if not any(self.event_ids):  # none given (an id is never empty): no tuples to make
            return [None] * len(self.tenants)
        return [
            (t, e) if e is not None else None
            for t, e in zip(self.tenants, self.event_ids, strict=True)
        ]

    def for_tenant(self, tenant_id: str) -> "Columns":
        """All of it as `tenant_id`'s (the caller has checked what each event named)."""
        column = pa.array([tenant_id] * self.table.num_rows, pa.string())
        index = self.table.schema.get_field_index("tenant_id")
        table = self.table.set_column(index, "tenant_id", column)
        return replace(self, table=table, tenants=[tenant_id] * len(self.tenants))

    def at(self, now: pa.Scalar) -> pa.Table:
        """The rows, with `now` as the time of events that gave none."""
        ts = self.table.column("ts")
        if not ts.null_count:
            return self.table
        filled = pc.fill_null(ts, now)
        return self.table.set_column(self.table.schema.get_field_index("ts"), "ts", filled)


def decode(body: bytes) -> Columns | None:
    """The samples of a push body (one event or `{"events": [...]}`) as columns, or None
    when any part needs the models to decide."""
    try:
        events = _DECODE_BATCH.decode(body).events
    except msgspec.ValidationError:
        try:
            events = [_DECODE_EVENT.decode(body)]
        except msgspec.ValidationError:
            return None
    except msgspec.DecodeError:
        return None
    return _columns(events)


def _plain(texts: list[str]) -> bool:
    """No control character in any of `texts`, searched in one pass over them joined
    (joining cannot make one)."""
    return _CONTROL.search("".join(texts)) is None


def _columns(events: list[_Event]) -> Columns | None:
    # Per field, not per event: the events transposed in C (attrgetter, chain).
    source, kind, metrics, given, tool, session, event_id, ts_text = (
        list(map(attrgetter(name), events)) for name in _FIELDS
    )
    counts = np.fromiter(map(len, metrics), np.int64, len(events))
    names = list(chain.from_iterable(metrics))
    values = np.fromiter(chain.from_iterable(map(dict.values, metrics)), np.float64, len(names))
    if not np.isfinite(values).all() or not _plain(names):
        return None
    # A name is at most 4 bytes a character: only long ones can pass the byte limit.
    long = MAX_NAME_BYTES // 4
    if max(map(len, names)) > long and any(len(n.encode()) > MAX_NAME_BYTES for n in names):
        return None
    tenants, named = _tenants(given)
    if not all(_TENANT.fullmatch(t) for t in set(tenants)):
        return None
    # None and "" hold no control character: `filter` leaves them out in C.
    if not all(_plain(list(filter(None, column))) for column in (source, tool, session, event_id)):
        return None
    ts = _times(pa.array(ts_text, pa.string()))
    if ts is None:
        return None
    row_event = np.repeat(np.arange(len(events), dtype=np.int64), counts)
    rows = pa.array(row_event)
    kind_rows = pa.array(kind, pa.string()).take(rows)
    cumulative = pc.is_in(kind_rows, _CUMULATIVE).to_numpy(zero_copy_only=False)
    if (values[cumulative] < 0).any():
        return None
    n = len(names)

    def spread(column: Sequence[str | None]) -> pa.Array:
        return pa.array(column, pa.string()).take(rows)

    table = pa.Table.from_arrays(
        [
            ts.take(rows), spread(tenants), spread(tool), spread(session), spread(source),
            pa.array(names, pa.string()), kind_rows, pa.array(values),
            pa.array([NO_LABELS] * n, pa.string()),
        ],
        schema=SAMPLE_SCHEMA,
    )  # fmt: skip
    return Columns(table, row_event, event_id, tenants, named)


def _tenants(given: list[str | msgspec.UnsetType]) -> tuple[list[str], list[bool]]:
    """Each event's tenant ("local" where it named none) and whether it named one; per
    event in Python only when some events name one and others do not."""
    distinct = set(given)
    n = len(given)
    if msgspec.UNSET not in distinct:
        return given, [True] * n  # type: ignore[return-value]
    if len(distinct) == 1:
        return ["local"] * n, [False] * n
    return [t if type(t) is str else "local" for t in given], [type(t) is str for t in given]


def _times(texts: pa.Array) -> pa.Array | None:
    """The events' times (NULL where none was given), or None unless every given one is
    plain RFC 3339 (`T`, `Z` or an offset, up to 6 decimals) in the models' range."""
    if texts.null_count == len(texts):
        return pa.nulls(len(texts), _TS)
    given = texts.drop_null() if texts.null_count else texts
    if not pc.all(pc.match_substring_regex(given, _RFC3339)).as_py():
        return None
    try:
        ts = pc.cast(texts, _TS)
    except pa.ArrowInvalid:  # e.g. February 30th: the models say what is wrong
        return None
    low, high = pc.min_max(ts).values()
    if low.as_py() < EARLIEST or high.as_py() >= LATEST:
        return None
    return ts
