"""Encoding a batch for one filter, once, into the bytes every matching client gets."""

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

from schemas.labels import Labels
from schemas.labels import matches as label_matches
from schemas.nested import from_json_number, json_value
from schemas.times import rfc3339
from stream.batches import Batch, Series, runs_of
from stream.columns import metrics_texts


class Outgoing(NamedTuple):
    """A message as sent: its JSON text, and the seq of its cursor if it carries one."""

    type: str
    text: str
    seq: int | None = None


class Filter(NamedTuple):
    """What a client watches; None matches anything, and `labels` are exact matches."""

    tenant_id: str | None = None
    tool_id: str | None = None
    session_id: str | None = None
    labels: Labels = ()

    def matches(
        self,
        tenant_id: str,
        tool_id: str | None,
        session_id: str | None,
        labels: Labels | None = None,
    ) -> bool:
        """Whether a row passes; `labels` None (a scrape's error) is not label-filtered."""
        return (
            (self.tenant_id is None or self.tenant_id == tenant_id)
            and (self.tool_id is None or self.tool_id == tool_id)
            and (self.session_id is None or self.session_id == session_id)
            and (labels is None or label_matches(self.labels, labels))
        )

    def passes(self, series: Series) -> bool:
        return self.matches(series.tenant_id, series.tool_id, series.session_id, series.labels)

    def described(self) -> dict[str, Any]:
        """The filter as messages echo it (`labels` only when it has any)."""
        out: dict[str, Any] = {"tenant_id": self.tenant_id, "tool_id": self.tool_id,
                               "session_id": self.session_id}  # fmt: skip
        if self.labels:
            out["labels"] = dict(self.labels)
        return out


def error_messages(batch: Batch, flt: Filter) -> list[bytes]:
    """An `error` message for each failed scrape of `batch` that `flt` can see."""
    return [
        orjson.dumps(
            {
                "type": "error",
                "error": f"{f.source}: {f.error}",
                "source": f.source,
                "timestamp": rfc3339(f.ts),
            }
        )
        for f in batch.failures
        if flt.matches(f.tenant_id, f.tool_id, None)
    ]


def encode_batches(batches: Sequence[Batch], flt: Filter, epoch: str) -> list[list[Outgoing]]:
    """Everything a client with `flt` is sent for each of `batches` (in seq order): errors
    first, then metrics. Batches that lie next to each other in one block are encoded
    together, by column (stream/columns.py)."""
    out = [[Outgoing("error", e.decode()) for e in error_messages(b, flt)] for b in batches]
    passes = None if flt == Filter() else flt.passes
    described = flt.described()
    for i, j in runs_of(batches):
        block, run = batches[i].block, batches[i:j]
        starts = np.array([b.lo for b in run], np.int64)
        ends = np.array([b.hi for b in run], np.int64)
        texts = metrics_texts(block, starts, ends, passes, described, epoch)
        for messages, batch, text in zip(out[i:j], run, texts, strict=True):
            if text is not None:
                messages.append(Outgoing("metrics", text, batch.last_seq))
    return out


def encode_batch(batch: Batch, flt: Filter, epoch: str) -> list[Outgoing]:
    """`encode_batches` of one batch."""
    return encode_batches([batch], flt, epoch)[0]


def control(message: dict[str, Any]) -> Outgoing:
    """A message that is not part of the data (connected, pong, gap, ...)."""
    return Outgoing(str(message["type"]), orjson.dumps(message).decode())


def _update(tree: dict[str, Any], newer: dict[str, Any]) -> None:
    for key, value in newer.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _update(tree[key], value)
        else:
            tree[key] = value


def merge_metrics(texts: list[str]) -> str:
    """Consecutive `metrics` messages as one: the latest values, the deltas summed, the
    last one's time, seq and cursor. `coalesced` says how many batches it holds."""
    merged: dict[str, Any] = orjson.loads(texts[0])
    merged.setdefault("coalesced", 1)
    for text in texts[1:]:
        message = orjson.loads(text)
        _update(merged["data"], message["data"])
        for source, deltas in message["deltas"].items():
            target = merged["deltas"].setdefault(source, {})
            for metric, delta in deltas.items():
                target[metric] = json_value(
                    from_json_number(target.get(metric, 0)) + from_json_number(delta)
                )
        for key in ("timestamp", "seq", "cursor", "tenant_id", "tool_id", "session_id", "labels"):
            if key in message:
                merged[key] = message[key]
        merged["coalesced"] += message.get("coalesced", 1)
    return orjson.dumps(merged).decode()
