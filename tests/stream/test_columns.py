"""The columnar encoder writes exactly the messages a row-by-row encoder writes."""

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.nested import json_value
from stream.batches import Batch, Block, Row, Series
from stream.columns import by_rows, flat_template, metrics_texts, number_texts, tree_template
from stream.encode import Filter, encode_batches

T0 = datetime(2026, 3, 1, tzinfo=UTC)
SERIES = [
    Series(tenant, tool, session, source, metric, labels)
    for tenant, tool, session in [("local", None, None), ("acme", "t", None), ("acme", "t", "s")]
    for source in ("a", "b.c")
    for metric, labels in [
        ("x", ()), ("x.y", ()), ("x.y.z", ()), ("up", ()), ("status", ()), ("n", ()),
        ('m{k="a.b"}', (("k", "a.b"),)), ('m{k="c"}', (("k", "c"),)), ("é\"q", ()),
    ]
]  # fmt: skip
FILTERS = [
    Filter(),
    Filter("acme"),
    Filter("acme", "t"),
    Filter("acme", "t", "s"),
    Filter("local"),
    Filter(labels=(("k", "a.b"),)),
    Filter("nobody"),
]
NUMBERS = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 2.5, 1e16, 2.0**53, 2.0**53 - 1, -3.0, 1e-7, 0.1,
                     math.nan, math.inf, -math.inf, 1.7976931348623157e308, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**60), 2**60).map(float),
)  # fmt: skip
ROW = st.tuples(st.integers(0, len(SERIES) - 1), NUMBERS, st.one_of(st.none(), NUMBERS),
                st.integers(0, 10**9))  # fmt: skip


def _batches(spec: list[list[tuple[int, float, float | None, int]]]) -> list[Batch]:
    rows, seq = [], 0
    for b, batch in enumerate(spec, start=1):
        for which, value, delta, us in batch:
            seq += 1
            s = SERIES[which]
            rows.append(Row(seq, b, T0 + timedelta(microseconds=us), which + 1, *s[:5], s.labels,
                            "counter", value, delta))  # fmt: skip
    block = Block.of_rows(rows)
    out, lo = [], 0
    for b, batch in enumerate(spec, start=1):
        hi = lo + len(batch)
        out.append(Batch(b, int(block.seq[hi - 1]), block, lo, hi, []))
        lo = hi
    return out


def _by_rows(batch: Batch, flt: Filter, epoch: str) -> str | None:
    block = batch.block
    rows = [i for i in range(batch.lo, batch.hi)
            if flt.passes(block.series[int(block.series_id[i])])]  # fmt: skip
    if not rows:
        return None
    return by_rows(block, rows, batch.hi - 1, flt.described(), epoch)


@settings(max_examples=300, deadline=None)
@given(
    spec=st.lists(st.lists(ROW, min_size=1, max_size=8), min_size=1, max_size=6),
    repeat=st.integers(1, 3),
    flt=st.sampled_from(FILTERS),
)
def test_columnar_messages_are_the_row_by_row_ones(
    spec: list[list[tuple[int, float, float | None, int]]], repeat: int, flt: Filter
) -> None:
    # Repeated shapes share a template; rows of one series in a batch, a dotted name under
    # a leaf, `up` and `status`, labels with dots, text that JSON escapes.
    batches = _batches(spec * repeat)
    block = batches[0].block
    starts = np.array([b.lo for b in batches])
    ends = np.array([b.hi for b in batches])
    passes = None if flt == Filter() else flt.passes
    got = metrics_texts(block, starts, ends, passes, flt.described(), "ep", row_by_row=0)
    for batch, text in zip(batches, got, strict=True):
        want = _by_rows(batch, flt, "ep")
        assert text == want
        if want is not None:
            orjson.loads(want)  # valid JSON
    # Through the stream's entry point (row by row when few rows), the same.
    messages = encode_batches(batches, flt, "ep")
    assert [[m.text for m in ms] for ms in messages] == [[t] if t else [] for t in got]
    assert all(m.seq == b.last_seq for ms, b in zip(messages, batches, strict=True) for m in ms)


@settings(max_examples=500, deadline=None)
@given(
    shape=st.lists(st.tuples(st.integers(0, len(SERIES) - 1), st.booleans()), min_size=1,
                   max_size=30),
)  # fmt: skip
def test_a_flat_template_is_the_one_the_trees_give(shape: list[tuple[int, bool]]) -> None:
    """Where a batch's trees are one level deep, the template made without them is the
    same, text and slots; any other batch is left to the trees."""
    series, has_delta = [SERIES[i] for i, _ in shape], [d for _, d in shape]
    flat, trees = flat_template(series, has_delta), tree_template(series, has_delta)
    one_level = (
        len(set(series)) == len(series)
        and all(s.metric != "up" and ("." not in s.metric or "{" in s.metric) for s in series)
        and len({(s.source, s.metric) for s in series}) == len(series)
    )
    assert (flat is not None) == one_level
    if flat is not None:
        assert flat.pieces.to_pylist() == trees.pieces.to_pylist()
        assert flat.kinds.tolist() == trees.kinds.tolist()
        assert flat.rows.tolist() == trees.rows.tolist()
        assert not flat.summed and not trees.summed


@settings(max_examples=200, deadline=None)
@given(st.lists(NUMBERS, max_size=50))
def test_numbers_are_written_as_json_value_and_orjson_write_them(values: list[float]) -> None:
    got = number_texts(np.array(values, np.float64)).to_pylist()
    assert got == [orjson.dumps(json_value(v)).decode() for v in values]


def test_one_batch_or_many_give_the_same_messages() -> None:
    spec = [[(i % len(SERIES), float(i), float(i % 3) if i % 2 else None, i) for i in range(k)]
            for k in (1, 5, 5, 1, 90, 5)]  # fmt: skip
    batches = _batches(spec)
    for flt in FILTERS:
        together = encode_batches(batches, flt, "ep")
        alone = [encode_batches([b], flt, "ep")[0] for b in batches]
        assert together == alone


def test_two_rows_of_one_name_in_a_batch_add_their_deltas_and_the_later_value_wins() -> None:
    # Two tenants' series of one source and name (a push fills tenant, tool and session per
    # event), then a dotted name and `up`: what a dashboard adds up for one name.
    local, acme = SERIES.index(Series("local", None, None, "a", "x", ())), SERIES.index(
        Series("acme", "t", None, "a", "x", ()))  # fmt: skip
    up = SERIES.index(Series("local", None, None, "a", "up", ()))
    dotted = SERIES.index(Series("local", None, None, "a", "x.y", ()))
    spec = [
        [(local, 10.0, 2.0, 0), (acme, 7.0, 3.5, 0), (up, 0.0, None, 0), (dotted, 1.0, -0.0, 0)]
    ]
    (messages,) = encode_batches(_batches(spec), Filter(), "ep")
    message = orjson.loads(messages[0].text)
    # `x.y` cannot nest under the leaf `x`: it stays dotted.
    assert message["data"] == {"a": {"x": 7, "status": "down", "x.y": 1}}
    assert message["deltas"] == {"a": {"x": 5.5, "x.y": 0}}
