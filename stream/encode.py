"""Encoding a batch for one filter, once, into the bytes every matching client gets."""

from collections.abc import Iterable
from typing import Any, NamedTuple

import orjson

from schemas.labels import Labels
from schemas.labels import matches as label_matches
from schemas.nested import from_json_number, json_value, put
from schemas.times import rfc3339
from stream.batches import Batch, Row


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

    def described(self) -> dict[str, Any]:
        """The filter as messages echo it (`labels` only when it has any)."""
        out: dict[str, Any] = {"tenant_id": self.tenant_id, "tool_id": self.tool_id,
                               "session_id": self.session_id}  # fmt: skip
        if self.labels:
            out["labels"] = dict(self.labels)
        return out


def _data_and_deltas(rows: Iterable[Row]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    data: dict[str, dict[str, Any]] = {}
    deltas: dict[str, dict[str, Any]] = {}
    for row in rows:
        source = data.setdefault(row.source, {})
        if row.metric == "up":
            source["status"] = "healthy" if row.value else "down"
            continue
        put(source, row.metric, json_value(row.value))
        if row.delta is not None:
            per_source = deltas.setdefault(row.source, {})
            before = from_json_number(per_source.get(row.metric, 0))
            per_source[row.metric] = json_value(before + row.delta)
    return data, deltas


def metrics_message(batch: Batch, flt: Filter, epoch: str) -> bytes | None:
    """The `metrics` message of `batch` for `flt`, or None when no row passes it."""
    rows = [r for r in batch.rows if flt.matches(r.tenant_id, r.tool_id, r.session_id, r.labels)]
    if not rows:
        return None
    data, deltas = _data_and_deltas(rows)
    return orjson.dumps(
        {
            "type": "metrics",
            "timestamp": rfc3339(batch.ts),
            "seq": batch.last_seq,
            "cursor": f"{epoch}:{batch.last_seq}",
            **flt.described(),
            "data": data,
            "deltas": deltas,
        }
    )


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


def encode_batch(batch: Batch, flt: Filter, epoch: str) -> list[Outgoing]:
    """Everything a client with `flt` is sent for `batch`: errors first, then metrics."""
    out = [Outgoing("error", e.decode()) for e in error_messages(batch, flt)]
    metrics = metrics_message(batch, flt, epoch)
    if metrics is not None:
        out.append(Outgoing("metrics", metrics.decode(), batch.last_seq))
    return out


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
