"""A pushed event once validated: what the push route and the writer work with."""

from dataclasses import dataclass
from datetime import datetime

from schemas.models import IngestEvent
from schemas.rows import Kind


@dataclass(frozen=True, slots=True)
class Event:
    """One validated pushed event, as the route and the writer use it (the model's
    fields, and which of them the body gave)."""

    source: str
    kind: Kind
    metrics: dict[str, float]
    labels: dict[str, str] | None
    tenant_id: str
    tool_id: str | None
    session_id: str | None
    event_id: str | None
    ts: datetime | None
    given: frozenset[str]

    @classmethod
    def of(cls, model: IngestEvent) -> "Event":
        return cls(model.source, model.kind, model.metrics, model.labels, model.tenant_id,
                   model.tool_id, model.session_id, model.event_id, model.ts,
                   frozenset(model.model_fields_set))  # fmt: skip
