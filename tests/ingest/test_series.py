"""The writer's series map: a tick whose sources expose what they exposed last time takes
its ids from the per-source cache; whatever changes, the ids are those of the full path."""

import sys
from typing import Any

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.series import MIN_RUN, SeriesIndex
from schemas.labels import NO_LABELS, to_json
from schemas.rows import SAMPLE_SCHEMA

NAMES = [f"m{i}" for i in range(6)]
LABELS = [NO_LABELS, to_json((("le", "1"),)), to_json((("le", "+Inf"),))]
# One source's exposition: (name, labels) pairs, in exposition order.
EXPOSITION = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(LABELS)),
                      min_size=MIN_RUN, max_size=12, unique=True)  # fmt: skip
TICK = st.dictionaries(st.sampled_from([f"s{i}" for i in range(8)]), EXPOSITION, min_size=1)
# What changes from one tick to the next: one source's labels, order, a series more or
# less, a source gone or new, or nothing.
CHANGE = st.tuples(st.sampled_from(["labels", "swap", "add", "drop", "gone", "new", "none"]),
                   st.integers(0, 7), st.integers(0, 11), st.integers(0, 11))  # fmt: skip


def changed(tick: dict[str, list[tuple[str, str]]], change: tuple[str, int, int, int]) -> Any:
    what, s, i, j = change
    out = {source: list(pairs) for source, pairs in tick.items()}
    source = sorted(out)[s % len(out)]
    pairs = out[source]
    i, j = i % len(pairs), j % len(pairs)
    if what == "labels":
        name, labels = pairs[i]
        other = LABELS[(LABELS.index(labels) + 1) % len(LABELS)]
        if (name, other) not in pairs:
            pairs[i] = (name, other)
    elif what == "swap":
        pairs[i], pairs[j] = pairs[j], pairs[i]
    elif what == "add":
        extra = [(n, lb) for n in NAMES for lb in LABELS if (n, lb) not in pairs]
        pairs.insert(i, extra[j % len(extra)])
    elif what == "drop" and len(pairs) > MIN_RUN:
        del pairs[i]
    elif what == "gone" and len(out) > 1:
        del out[source]
    elif what == "new":
        out[f"s{8 + s}"] = [(n, NO_LABELS) for n in NAMES]
    return out


def tick_table(tick: dict[str, list[tuple[str, str]]], tenant_of: dict[str, str]) -> pa.Table:
    """A tick as the collector builds it: each source's rows together, sources dictionary
    encoded, tools per source, one session column of NULLs."""
    rows = [(source, name, labels) for source, pairs in tick.items() for name, labels in pairs]
    sources = list(tick)
    codes = np.array([sources.index(r[0]) for r in rows], np.int32)
    n = len(rows)
    return pa.Table.from_arrays(
        [
            pa.array(np.full(n, 1_795_000_000_000_000), pa.timestamp("us", tz="UTC")),
            pa.array([tenant_of[r[0]] for r in rows]),
            pa.DictionaryArray.from_arrays(
                codes, pa.array([None if s == "s0" else f"tool-{s}" for s in sources])
            ),
            pa.nulls(n, pa.string()),
            pa.DictionaryArray.from_arrays(codes, pa.array(sources)),
            pa.array([r[1] for r in rows]), pa.array(["gauge"] * n),
            pa.array(np.arange(n, dtype=np.float64)), pa.array([r[2] for r in rows]),
        ],
        schema=SAMPLE_SCHEMA.set(2, pa.field("tool_id", pa.dictionary(pa.int32(), pa.string())))
        .set(4, pa.field("source", pa.dictionary(pa.int32(), pa.string()))),
    )  # fmt: skip


def same(a: Any, b: Any) -> None:
    assert a.ids.equals(b.ids)
    assert (a.keep is None) == (b.keep is None)
    if a.keep is not None:
        assert np.array_equal(a.keep, b.keep)
    assert a.new.equals(b.new) and a.new_keys == b.new_keys
    assert a.new_tenants == b.new_tenants and a.skipped == b.skipped


@settings(max_examples=200, deadline=None)
@given(first=TICK, changes=st.lists(CHANGE, min_size=1, max_size=8),
       limit=st.sampled_from([5, 40, 1000]),
       committed=st.lists(st.booleans(), min_size=9, max_size=9))  # fmt: skip
def test_ticks_resolve_through_the_cache_as_through_the_full_path(
    first: dict[str, list[tuple[str, str]]],
    changes: list[tuple[str, int, int, int]],
    limit: int,
    committed: list[bool],
) -> None:
    cached = SeriesIndex(limit, segment_rows=1)
    full = SeriesIndex(limit, segment_rows=sys.maxsize)
    tenant_of = {f"s{i}": "acme" if i % 3 else "local" for i in range(16)}
    ticks = [first]
    for change in changes:
        ticks.append(changed(ticks[-1], change))
    for tick, commit in zip(ticks, committed, strict=False):
        table = tick_table(tick, tenant_of)
        a = cached.resolve(table, drop_over_limit=True)
        b = full.resolve(table, drop_over_limit=True)
        same(a, b)
        if commit:  # an uncommitted tick's runs are not remembered
            cached.confirm(a)
            full.confirm(b)
    # Every tick again, twice: the second time every id comes from the cache.
    for tick in ticks:
        table = tick_table(tick, tenant_of)
        for again in (False, True):
            before = cached.cached_rows
            a, b = cached.resolve(table, drop_over_limit=True), full.resolve(table, True)
            same(a, b)
            cached.confirm(a)
            full.confirm(b)
            if again and a.keep is None:
                assert cached.cached_rows - before == table.num_rows
    assert full.cached_rows == 0


def test_an_unchanged_tick_takes_every_id_from_the_cache() -> None:
    index = SeriesIndex(segment_rows=1)
    tick = {f"s{i}": [(n, NO_LABELS) for n in NAMES] for i in range(8)}
    table = tick_table(tick, {s: "local" for s in tick})
    first = index.resolve(table)
    index.confirm(first)
    assert len(first.segments) == 8  # every run, remembered once committed
    again = index.resolve(table)
    assert again.ids.equals(first.ids) and again.new.num_rows == 0
    assert index.cached_rows == table.num_rows
