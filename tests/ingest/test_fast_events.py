"""The fast checks of push bodies (per event, and per column for large bodies) accept
only what the models accept, and give the same events; everything else goes to pydantic
(its error messages)."""

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ingest.bulk import BULK_BYTES, decode
from ingest.events import Event
from ingest.fast_events import fast_events
from ingest.push import columns_request, event_rows
from ingest.writer import Pushed
from schemas.models import IngestBatch, IngestEvent

ODD_NAMES = ["m", "a.b", "x" * 1024, "x" * 1025, "é" * 600, "a\x00b", "a\u2028b"]
NAMES = st.one_of(st.text(max_size=6), st.sampled_from(ODD_NAMES))
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**60), 2**60),
                    st.booleans(), st.text(max_size=3), st.none())  # fmt: skip
TIMES = st.one_of(
    st.none(),
    st.sampled_from(["2026-11-20T10:00:00Z", "2026-11-20T10:00:00.123456+02:00",
                     "2026-11-20T10:00:00.1234567Z", "2026-11-20 10:00:00Z", "2026-11-20",
                     "1969-01-01T00:00:00Z", "9999-01-01T00:00:00Z", "2026-11-20t10:00:00z",
                     "2026-11-20T23:59:60Z", "2026-02-30T10:00:00Z", "2026-11-20T10:00:00+24:00",
                     "2026-11-20T10:00:00-00:00", "2026-11-20T10:00:00+23:59",
                     "1970-01-01T23:59:59+23:59", "8999-12-31T23:59:59-01:00"]),
    st.integers(0, 2**31),
)  # fmt: skip
EVENT = st.fixed_dictionaries(
    {
        "source": st.one_of(st.sampled_from(["api", "", "s" * 201, "a\x01"]), st.text(max_size=4)),
        "kind": st.sampled_from(["counter", "gauge", "delta", "untyped", "histogram"]),
        "metrics": st.dictionaries(NAMES, NUMBERS, max_size=3),
    },
    optional={
        "tenant_id": st.sampled_from(["local", "acme", "a b", "", None, 3]),
        "tool_id": st.one_of(st.none(), st.sampled_from(["t", "", "x" * 201])),
        "session_id": st.one_of(st.none(), st.text(max_size=3)),
        "event_id": st.one_of(st.none(), st.text(max_size=3)),
        "ts": TIMES,
        "labels": st.one_of(st.none(), st.just({"a": "1"})),
        "extra": st.just(1),
    },
)


# Mostly valid events, with one thing off now and then: the cases where the two could
# disagree.
NEAR = st.fixed_dictionaries(
    {
        "source": st.sampled_from(["api", "s-1", "api"]),
        "kind": st.sampled_from(["counter", "gauge", "delta", "untyped"]),
        "metrics": st.dictionaries(
            st.sampled_from(["m", "a.b", "x" * 1024, "é" * 512, "é" * 513, "tokens_saved"]),
            st.one_of(st.floats(-1e300, 1e300), st.integers(-(2**54), 2**54),
                      st.sampled_from([0, -1, 1.5, -0.0])),  # fmt: skip
            min_size=1, max_size=3,
        ),
    },
    optional={
        "tenant_id": st.sampled_from(["local", "acme", "a:b.c-d_e", "a b"]),
        "tool_id": st.sampled_from(["t", "claude-code", None, ""]),
        "session_id": st.sampled_from(["s-1", None]),
        "event_id": st.sampled_from(["e-1", None, "é"]),
        "ts": st.sampled_from(["2026-11-20T10:00:00Z", "2026-11-20T10:00:00.123456+02:00",
                               "1970-01-01T12:00:00Z", None, "2026-11-20T10:00:00.1234567Z",
                               "2026-11-20T23:59:60Z", "2026-02-30T10:00:00Z"]),
    },
)  # fmt: skip


def by_pydantic(doc: Any) -> list[Event] | None:
    try:
        if isinstance(doc, dict) and "events" in doc:
            return [Event.of(e) for e in IngestBatch.model_validate(doc).events]
        return [Event.of(IngestEvent.model_validate(doc))]
    except ValidationError:
        return None


@settings(max_examples=600, deadline=None)
@given(doc=st.one_of(NEAR, EVENT, st.builds(lambda es: {"events": es},
                                            st.lists(NEAR | EVENT, max_size=3))))  # fmt: skip
def test_the_fast_check_accepts_only_what_the_models_accept_and_gives_the_same(doc: Any) -> None:
    doc = orjson.loads(orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS))  # as bodies arrive
    fast = fast_events(doc)
    if fast is None:
        return  # pydantic decides
    assert fast == by_pydantic(doc)


@pytest.mark.parametrize("ts", ["2026-11-20T10:00:00Z", "2026-11-20T12:00:00.5+02:00"])
def test_a_plain_event_takes_the_fast_path(ts: str) -> None:
    doc = {"source": "api", "kind": "counter", "metrics": {"m": 1, "n": 2.5}, "ts": ts,
           "tool_id": "t", "event_id": "e-1"}  # fmt: skip
    fast = fast_events(doc)
    assert fast is not None and fast == by_pydantic(doc)
    assert fast[0].given == frozenset(doc)


NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def rows_by_event(request: Pushed) -> list[tuple[object, list[tuple[object, ...]]]]:
    """A columns request as (key, rows) per event, in the rows path's terms."""
    rows = request.table.to_pylist()
    out: list[tuple[object, list[tuple[object, ...]]]] = [(k, []) for k in request.keys]
    for event, row in zip(request.event.tolist(), rows, strict=True):
        out[event][1].append(tuple(row.values()))
    return out


def rows_of(events: list[Event]) -> list[tuple[object, list[tuple[object, ...]]]]:
    return [(key, [tuple(r) for r in rows]) for key, rows in event_rows(events, NOW)]


@settings(max_examples=600, deadline=None)
@given(doc=st.one_of(NEAR, EVENT, st.builds(lambda es: {"events": es},
                                            st.lists(NEAR | EVENT, max_size=3))))  # fmt: skip
def test_the_column_check_accepts_only_what_the_models_accept_and_gives_the_same(
    doc: Any,
) -> None:
    body = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    columns = decode(body)
    if columns is None:
        return  # pydantic decides
    events = by_pydantic(orjson.loads(body))
    assert events is not None
    assert rows_by_event(columns_request(columns, NOW)) == rows_of(events)
    assert columns.named == ["tenant_id" in e.given for e in events]


def test_a_repeated_key_counts_once_and_the_last_wins_as_in_the_models() -> None:
    body = (b'{"events": [{"source": "a", "source": "b", "kind": "gauge", '
            b'"metrics": {"m": 1, "m": 2}, "ts": "2026-11-20T10:00:00Z"}]}')  # fmt: skip
    columns = decode(body)
    events = by_pydantic(orjson.loads(body))
    assert columns is not None and events is not None
    assert rows_by_event(columns_request(columns, NOW)) == rows_of(events)


def test_a_large_plain_body_takes_the_column_path() -> None:
    doc = {"events": [{"source": f"s{i}", "kind": "counter", "metrics": {"m": i, "n": 0.5},
                       "event_id": f"e{i}", "ts": "2026-11-20T10:00:00.5+02:00"}
                      for i in range(500)]}  # fmt: skip
    body = orjson.dumps(doc)
    assert len(body) >= BULK_BYTES
    columns = decode(body)
    events = by_pydantic(doc)
    assert columns is not None and events is not None
    assert rows_by_event(columns_request(columns, NOW)) == rows_of(events)
