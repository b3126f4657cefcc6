"""Stream messages (CONTRACT.md "Streams"): what clients send, and what they receive.

The server encodes outgoing messages straight to JSON for speed; these models are their
documented shape, and the tests validate every message received against them.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.labels import Labels
from schemas.models import Label, LabelSet, TenantId


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- client to server (WebSocket) ----


class Subscribe(_Message):
    """Change the filters without reconnecting; absent or null means "any"."""

    type: Literal["subscribe"]
    tenant_id: TenantId | None = None
    tool_id: Label | None = None
    session_id: Label | None = None
    labels: LabelSet | None = None
    tags: LabelSet | None = None  # the old service's name for `labels`

    def label_filter(self) -> Labels:
        """`labels` and `tags` together, as exact matches."""
        return tuple(sorted({**(self.tags or {}), **(self.labels or {})}.items()))


class Ping(_Message):
    type: Literal["ping"]


ClientMessage = Annotated[Subscribe | Ping, Field(discriminator="type")]


# ---- server to client ----


class Connected(_Message):
    type: Literal["connected"]
    message: str
    interval: float
    tenant_id: str | None
    tool_id: str | None
    session_id: str | None
    labels: dict[str, str] | None = None
    cursor: str
    resumed: bool | None  # None: no resume was asked for
    resume_error: str | None = None


class Metrics(_Message):
    type: Literal["metrics"]
    timestamp: str
    seq: int
    cursor: str
    tenant_id: str | None
    tool_id: str | None
    session_id: str | None
    labels: dict[str, str] | None = None
    data: dict[str, dict[str, Any]]
    # Numbers; non-finite sums as "+Inf", "-Inf" or "NaN" (as Prometheus's HTTP API).
    deltas: dict[str, dict[str, float | str]]
    # Batches merged into this one by the tenant's max_events_per_minute (absent: 1).
    coalesced: int | None = None


class Error(_Message):
    type: Literal["error"]
    error: str
    source: str | None = None
    timestamp: str


class Gap(_Message):
    """The client fell behind; everything after `cursor` is to be read by resuming."""

    type: Literal["gap"]
    cursor: str
    reason: str


class Pong(_Message):
    type: Literal["pong"]


class Subscribed(_Message):
    type: Literal["subscribed"]
    tenant_id: str | None
    tool_id: str | None
    session_id: str | None
    labels: dict[str, str] | None = None


ServerMessage = Annotated[
    Connected | Metrics | Error | Gap | Pong | Subscribed, Field(discriminator="type")
]
