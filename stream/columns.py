"""`metrics` messages from columns, without a Python object per row.

A batch's message is its header (time, seq, cursor, filter) and two JSON trees, `data`
and `deltas`, whose shape depends only on which series the batch holds (in order) and
which of them have a delta. Batches of the same shape (every tick of a source, every push
of one kind) share a template: the message's fixed text, cut where a number goes. A
message is then the template's pieces with each row's number between them, and all the
messages of a page for a filter are put together by one Arrow `take` over the numbers,
formatted once per page (as `json_value` and orjson write them).

The tree is built exactly as a row-by-row encoder would build it (`by_rows`, used for the
rare batch where two rows add up to one delta): dotted names nest (`schemas.nested.put`),
a later row wins, `up` is the source's `status`.
"""

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache, partial
from typing import Any, NamedTuple

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from schemas.nested import from_json_number, json_value, nests, put
from schemas.times import rfc3339
from stream.batches import Block, Series

VALUE, DELTA, STATUS = 0, 1, 2
ROW_BY_ROW = 64  # runs of fewer rows are encoded row by row
MAX_TEMPLATE_PIECES = 500_000  # all templates kept, in pieces of text (~20-100 bytes each)
Passes = Callable[[Series], bool]


class _Slot(NamedTuple):
    """Where a number goes: which of a row's texts, of which row of the batch."""

    kind: int
    row: int


class Template(NamedTuple):
    pieces: pa.Array  # the fixed text: len(kinds) + 1 strings
    kinds: np.ndarray  # per slot: VALUE, DELTA or STATUS
    rows: np.ndarray  # per slot: the row of the batch (among those that pass)
    summed: bool  # two rows add up to one delta: encoded `by_rows` instead


def _trees(
    series: Sequence[Series],
    has_delta: Sequence[bool],
    leaf: Callable[[int, int], Any],
    summed: Callable[[Any, int], Any],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], bool]:
    """The `data` and `deltas` trees of a batch whose rows are of `series`, in order, with
    `leaf(kind, row)` where a row's number goes (VALUE, DELTA or STATUS); a delta a second
    row of one source and name adds to is `summed(earlier, row)`. Also whether one did."""
    data: dict[str, Any] = {}
    deltas: dict[str, dict[str, Any]] = {}
    added = False
    for row, (s, delta) in enumerate(zip(series, has_delta, strict=True)):
        source = data.setdefault(s.source, {})
        if s.metric == "up":
            source["status"] = leaf(STATUS, row)
            continue
        put(source, s.metric, leaf(VALUE, row))
        if delta:
            per_source = deltas.setdefault(s.source, {})
            earlier = per_source.get(s.metric)
            added = added or s.metric in per_source
            per_source[s.metric] = leaf(DELTA, row) if earlier is None else summed(earlier, row)
    return data, deltas, added


def template(series: list[Series], has_delta: list[bool]) -> Template:
    """The template of a batch whose rows are of `series`, in order."""
    flat = flat_template(series, has_delta)
    return flat if flat is not None else tree_template(series, has_delta)


def tree_template(series: list[Series], has_delta: list[bool]) -> Template:
    """`template`, through the trees a row-by-row encoder builds."""
    data, deltas, summed = _trees(series, has_delta, _Slot, lambda _, row: _Slot(DELTA, row))
    pieces = ['"data":']
    slots: list[_Slot] = []
    _emit(data, pieces, slots)
    pieces[-1] += ',"deltas":'
    _emit(deltas, pieces, slots)
    pieces[-1] += "}"
    return Template(
        pa.array(pieces, pa.string()),
        np.array([s.kind for s in slots], np.int64),
        np.array([s.row for s in slots], np.int64),
        summed,
    )


def flat_template(series: list[Series], has_delta: list[bool]) -> Template | None:
    """`template` of a batch whose trees are one level under each source (no dotted name,
    no `up`, no name twice in a source: most ticks and pushes), without building them: a
    20,000-row shape in a fraction of the trees' 30-40 ms. None for any other batch."""
    sources = [s.source for s in series]
    metrics = [s.metric for s in series]
    if "up" in metrics or len(set(zip(sources, metrics, strict=True))) < len(series):
        return None
    if any(nests(m) for m in metrics):
        return None
    keys = [_key(m) for m in metrics]
    rows = list(range(len(series)))
    data = _flat_pieces(rows, sources, keys)
    deltas = _flat_pieces([r for r in rows if has_delta[r]], sources, keys)
    pieces: list[str] = ['"data":']
    for text in (data[0], [',"deltas":'], deltas[0], ["}"]):  # each: the text around slots
        pieces[-1] += text[0]
        pieces += text[1:]
    return Template(
        pa.array(pieces, pa.string()),
        np.array([VALUE] * len(data[1]) + [DELTA] * len(deltas[1]), np.int64),
        np.array(data[1] + deltas[1], np.int64),
        False,
    )


def _flat_pieces(
    rows: list[int], sources: list[str], keys: list[str]
) -> tuple[list[str], list[int]]:
    """A one-level tree's text around its numbers (rows grouped by source, sources and
    names in the order they first come, as dicts keep them), and the row of each number."""
    grouped: dict[str, list[int]] = {}
    for r in rows:
        grouped.setdefault(sources[r], []).append(r)
    if not grouped:
        return ["{}"], []
    pieces, order = [], []
    before = "{"
    for source, members in grouped.items():
        pieces.append(f"{before}{_key(source)}{{{keys[members[0]]}")
        pieces.extend("," + keys[r] for r in members[1:])
        order.extend(members)
        before = "},"
    pieces.append("}}")
    return pieces, order


def _emit(tree: dict[str, Any], pieces: list[str], slots: list[_Slot]) -> None:
    pieces[-1] += "{"
    first = True
    for key, value in tree.items():
        pieces[-1] += _key(key) if first else "," + _key(key)
        first = False
        if isinstance(value, dict):
            _emit(value, pieces, slots)
        else:
            slots.append(value)
            pieces.append("")
    pieces[-1] += "}"


@lru_cache(maxsize=1 << 16)
def _key(key: str) -> str:
    """A key's JSON text and colon (the same names recur in every source and shape)."""
    return orjson.dumps(key).decode() + ":"


class _Templates:
    """Templates by shape, least recently used first out, bounded by their pieces."""

    def __init__(self, max_pieces: int = MAX_TEMPLATE_PIECES) -> None:
        self._kept: OrderedDict[bytes, Template] = OrderedDict()
        self._pieces = 0
        self._max = max_pieces
        self._lock = threading.Lock()  # pages are encoded in worker threads

    def get(self, key: bytes, build: Callable[[], Template]) -> Template:
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
                return found
        made = build()
        with self._lock:
            if key not in self._kept:
                self._kept[key] = made
                self._pieces += len(made.pieces)
            while self._pieces > self._max and len(self._kept) > 1:
                self._pieces -= len(self._kept.popitem(last=False)[1].pieces)
        return made


_TEMPLATES = _Templates()


def number_texts(values: np.ndarray) -> pa.Array:
    """Each number as a message writes it (`json_value`, then orjson): whole numbers as
    integers, non-finite ones as "NaN", "+Inf", "-Inf"."""
    finite = np.isfinite(values)
    whole = finite & (np.trunc(values) == values) & (np.abs(values) < 2.0**53)
    texts = pc.if_else(
        pa.array(whole),
        _dumped(np.where(whole, values, 0.0).astype(np.int64)),
        _dumped(np.where(finite, values, 0.0)),
    )
    if not finite.all():
        special = [json_value(v) for v in values[~finite].tolist()]
        texts = pc.replace_with_mask(
            texts, pa.array(~finite), pa.array([f'"{s}"' for s in special])
        )
    return texts


def _dumped(numbers: np.ndarray) -> pa.Array:
    """orjson's text of each number, as a string array: one `dumps` of the whole array,
    cut at its commas (no Python object per number)."""
    n = len(numbers)
    if not n:
        return pa.array([], pa.string())
    text = np.frombuffer(orjson.dumps(numbers, option=orjson.OPT_SERIALIZE_NUMPY), np.uint8)
    text = text[1:-1]
    commas = np.flatnonzero(text == ord(","))
    offsets = np.empty(n + 1, np.int32)
    offsets[0] = 0
    offsets[1:n] = commas - np.arange(n - 1)
    offsets[n] = len(text) - (n - 1)
    data = text[text != ord(",")]
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _row_texts(block: Block) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Each row's value, delta and status text, once per block (every filter uses them)."""
    texts = block.memo.get("texts")
    if texts is None:
        texts = block.memo["texts"] = (
            number_texts(block.value),
            number_texts(block.delta),
            pc.if_else(pa.array(block.value != 0), '"healthy"', '"down"'),
        )
    return texts


def _passing(block: Block, passes: Passes | None) -> np.ndarray | None:
    """Which rows pass the filter (decided once per series); None: all of them."""
    if passes is None:
        return None
    distinct = block.memo.get("distinct")
    if distinct is None:
        distinct = block.memo["distinct"] = np.unique(block.series_id, return_inverse=True)
    ids, inverse = distinct
    ok = np.array([passes(block.series[i]) for i in ids.tolist()], bool)
    return ok[inverse.reshape(-1)]


def metrics_texts(
    block: Block,
    starts: np.ndarray,
    ends: np.ndarray,
    passes: Passes | None,
    described: dict[str, Any],
    epoch: str,
    row_by_row: int = ROW_BY_ROW,
) -> list[str | None]:
    """The `metrics` message of each batch of `block` (rows starts[j]..ends[j], in order)
    for a filter: `passes` says which series it sees (None: all), `described` is how
    messages echo it. None for a batch none of whose rows pass. Fewer than `row_by_row`
    rows are encoded row by row (the columns' fixed cost is ~0.3 ms, a row's ~10 us)."""
    count = len(starts)
    out: list[str | None] = [None] * count
    if not count:
        return out
    lo, hi = int(starts[0]), int(ends[-1])
    if hi - lo < row_by_row:
        for j, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            ids = block.series_id[start:end].tolist()
            passing = [start + k for k, i in enumerate(ids)
                       if passes is None or passes(block.series[i])]  # fmt: skip
            if passing:
                out[j] = by_rows(block, passing, end - 1, described, epoch)
        return out
    keep = _passing(block, passes)
    kept = np.arange(lo, hi) if keep is None else np.flatnonzero(keep[lo:hi]) + lo
    if not len(kept):
        return out
    of_batch = np.searchsorted(ends, kept, side="right")
    sizes = np.bincount(of_batch, minlength=count)
    firsts = np.cumsum(sizes) - sizes  # where each batch's rows begin in `kept`
    last_rows = ends - 1
    ts_texts = pc.utf8_slice_codeunits(
        pc.strftime(pa.array(block.ts_us[last_rows], pa.timestamp("us", tz="UTC")),
                    format="%Y-%m-%dT%H:%M:%S"), 0, 23)  # fmt: skip
    seq_texts = _dumped(block.seq[last_rows])
    header = pa.array([
        '{"type":"metrics","timestamp":"', 'Z","seq":',
        ',"cursor":' + orjson.dumps(f"{epoch}:").decode()[:-1],
        '",' + orjson.dumps(described).decode()[1:-1] + ",",
    ])  # fmt: skip
    values, deltas, statuses = _row_texts(block)
    n = len(block)
    # The pool every piece is taken from, and where each part of it begins.
    at_value = len(header)
    at_kind = np.array([at_value, at_value + n, at_value + 2 * n], np.int64)
    at_ts = at_value + 3 * n
    at_seq = at_ts + count
    parts: list[pa.Array] = [header, values, deltas, statuses, ts_texts, seq_texts]
    size = at_seq + count
    at_template: dict[bytes, int] = {}
    groups: list[tuple[np.ndarray, np.ndarray, Template, int]] = []
    for length in np.unique(sizes[sizes > 0]).tolist():
        batches = np.flatnonzero(sizes == length)
        rows = kept[firsts[batches][:, None] + np.arange(length)]  # a batch per line
        shapes = np.concatenate([block.series_id[rows], block.has_delta[rows]], axis=1)
        distinct, members_of = _distinct_rows(shapes)
        for shape, members in zip(distinct, members_of, strict=True):
            key = hashlib.blake2b(epoch.encode() + shape.tobytes(), digest_size=16).digest()
            tmpl = _TEMPLATES.get(key, partial(_built, block, shape, length))
            if tmpl.summed:
                for j, r in zip(batches[members].tolist(), rows[members], strict=True):
                    out[j] = by_rows(block, r.tolist(), int(last_rows[j]), described, epoch)
                continue
            if key not in at_template:
                at_template[key] = size
                parts.append(tmpl.pieces)
                size += len(tmpl.pieces)
            groups.append((batches[members], rows[members], tmpl, at_template[key]))
    if not groups:
        return out
    pool = pa.concat_arrays(parts)
    pieces, widths, order_of = [], [], []
    for batches, rows, tmpl, at in groups:
        k = len(tmpl.kinds)
        grid = np.empty((len(batches), 8 + 2 * k), np.int64)
        grid[:, 0], grid[:, 2], grid[:, 4], grid[:, 6] = 0, 1, 2, 3
        grid[:, 1] = at_ts + batches
        grid[:, 3] = grid[:, 5] = at_seq + batches
        grid[:, 7::2] = at + np.arange(k + 1)
        grid[:, 8::2] = at_kind[tmpl.kinds] + rows[:, tmpl.rows]
        pieces.append(grid.reshape(-1))
        widths.append(np.full(len(batches), grid.shape[1]))
        order_of.append(batches)
    taken = pool.take(pa.array(np.concatenate(pieces)))
    offsets = np.frombuffer(taken.buffers()[1], np.int32)[
        taken.offset : taken.offset + len(taken) + 1
    ]
    text = taken.buffers()[2].to_pybytes()
    cuts = offsets[np.concatenate([[0], np.cumsum(np.concatenate(widths))])].tolist()
    for j, a, b in zip(np.concatenate(order_of).tolist(), cuts[:-1], cuts[1:], strict=True):
        out[j] = text[a:b].decode()
    return out


def _distinct_rows(shapes: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct lines of `shapes`, and which lines are each (each line compared as one
    run of bytes: `np.unique(axis=0)` compares field by field, slowly for long lines)."""
    if len(shapes) == 1:
        return shapes, [np.zeros(1, np.int64)]
    lines = np.ascontiguousarray(shapes).view(np.dtype((np.void, shapes.shape[1] * 8))).ravel()
    _, first, which = np.unique(lines, return_index=True, return_inverse=True)
    which = which.reshape(-1)
    order = np.argsort(which, kind="stable")
    bounds = np.cumsum(np.bincount(which, minlength=len(first)))[:-1]
    return shapes[first], np.split(order, bounds)


def _built(block: Block, shape: np.ndarray, length: int) -> Template:
    ids, deltas = shape[:length].tolist(), shape[length:].tolist()
    return template([block.series[i] for i in ids], [bool(d) for d in deltas])


def by_rows(
    block: Block, rows: Sequence[int], last: int, described: dict[str, Any], epoch: str
) -> str:
    """The `metrics` message, row by row, of a batch whose last row is `last` and whose
    rows that pass the filter are `rows` (of `block`)."""
    values = block.value[rows].tolist()
    deltas_of = block.delta[rows].tolist()

    def leaf(kind: int, row: int) -> Any:
        if kind == STATUS:
            return "healthy" if values[row] else "down"
        return json_value(values[row] if kind == VALUE else deltas_of[row])

    data, deltas, _ = _trees(
        [block.series[i] for i in block.series_id[rows].tolist()],
        block.has_delta[rows].tolist(),
        leaf,
        lambda earlier, row: json_value(from_json_number(earlier) + deltas_of[row]),
    )
    seq = int(block.seq[last])
    return orjson.dumps(
        {
            "type": "metrics",
            "timestamp": rfc3339(block.time(last)),
            "seq": seq,
            "cursor": f"{epoch}:{seq}",
            **described,
            "data": data,
            "deltas": deltas,
        }  # fmt: skip
    ).decode()
