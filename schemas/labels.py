"""Series labels (CONTRACT.md "Series and labels"): their canonical form, their text form,
and the limits every edge applies.

Canonical: keys sorted, empty values dropped. A label set travels through the pipeline as
canonical JSON text (`{"code":"200"}`; `{}` for none): hashable, cheap to compare, and
parsed back only when a new series is stored. Its text form is Prometheus's:
`http_requests_total{code="200",method="get"}`.
"""

import re
from collections.abc import Iterable, Mapping

import orjson

MAX_LABELS = 32
MAX_LABEL_VALUE_BYTES = 1024
MAX_NAME_BYTES = 1024  # metric names, and any text form of a series
NO_LABELS = "{}"

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

Labels = tuple[tuple[str, str], ...]  # canonical: sorted by key, no empty values


class LabelError(ValueError):
    """A label set that breaks the contract; the message names what."""


def canonical(labels: Mapping[str, str] | Iterable[tuple[str, str]]) -> Labels:
    """The label set sorted by key with empty values dropped; LabelError if invalid."""
    pairs = labels.items() if isinstance(labels, Mapping) else labels
    out = sorted((k, v) for k, v in pairs if v != "")
    if len(out) > MAX_LABELS:
        raise LabelError(f"{len(out)} labels, at most {MAX_LABELS}")
    for i, (key, value) in enumerate(out):
        if not isinstance(key, str) or not LABEL_NAME.fullmatch(key):
            raise LabelError(f"label name {key!r} is not [a-zA-Z_][a-zA-Z0-9_]*")
        if not isinstance(value, str):
            raise LabelError(f"label {key!r}: the value must be a string")
        if len(value.encode()) > MAX_LABEL_VALUE_BYTES:
            raise LabelError(f"label {key!r}: value over {MAX_LABEL_VALUE_BYTES} bytes")
        if i and out[i - 1][0] == key:
            raise LabelError(f"label {key!r} is given twice")
    return tuple(out)


def to_json(labels: Labels) -> str:
    """Canonical JSON text of a canonical label set (the pipeline's form)."""
    return orjson.dumps(dict(labels)).decode() if labels else NO_LABELS


def from_json(text: str | None) -> Labels:
    """The label set of canonical JSON text (already validated when it was made)."""
    if not text or text == NO_LABELS:
        return ()
    doc: dict[str, str] = orjson.loads(text)
    return tuple(doc.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def text_form(metric: str, labels: Labels) -> str:
    """`metric{k="v",...}`, or the bare name when there are no labels."""
    if not labels:
        return metric
    return metric + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


_PAIR = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)', re.DOTALL)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


def _unescape(value: str) -> str:
    return _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_text_form(text: str) -> tuple[str, Labels]:
    """`name{k="v"}` as (name, canonical labels); a name without braces has none.
    LabelError if the braces do not hold `k="v"` pairs."""
    name, brace, rest = text.partition("{")
    if not brace:
        return text, ()
    if not rest.endswith("}"):
        raise LabelError(f"{text[:80]!r}: labels must end with '}}'")
    body, pairs, pos = rest[:-1], [], 0
    while pos < len(body):
        match = _PAIR.match(body, pos)
        if match is None:
            raise LabelError(f'{text[:80]!r}: labels are not k="v" pairs')
        pairs.append((match.group(1), _unescape(match.group(2))))
        pos = match.end()
    return name.strip(), canonical(pairs)


def parse_filter(text: str, field: str) -> Labels:
    """A `labels` (or `tags`) query parameter: a JSON object of string values."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise LabelError(f'{field}: not a JSON object (e.g. {{"code":"200"}})') from None
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise LabelError(f'{field}: must be a JSON object of strings (e.g. {{"code":"200"}})')
    try:
        canonical(doc)  # validates names and sizes
    except LabelError as exc:
        raise LabelError(f"{field}: {exc}") from None
    # An empty value stays: it matches series without that label, as in PromQL.
    return tuple(sorted(doc.items()))


def matches(wanted: Labels, labels: Labels) -> bool:
    """Whether a series with `labels` has every exact match in `wanted`."""
    if not wanted:
        return True
    have = dict(labels)
    return all(have.get(k, "") == v for k, v in wanted)
