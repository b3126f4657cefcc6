"""Pydantic models of every REST body and query string (the edges only)."""

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

from schemas.rows import Kind

MAX_EVENTS_PER_REQUEST = 100_000  # the hard cap; the configured limit is lower

Label = Annotated[str, StringConstraints(min_length=1, max_length=200)]
TenantId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
MetricValue = Annotated[float, Field(strict=True, allow_inf_nan=False)]

EARLIEST = datetime(1970, 1, 2, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _in_range(ts: datetime) -> datetime:
    if not EARLIEST <= ts < LATEST:
        raise ValueError(f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return ts


# A time as the routes take it: with a zone, and in a range every computation can hold.
Time = Annotated[AwareDatetime, AfterValidator(_in_range)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestEvent(Strict):
    """One pushed observation of one or more metrics from one source."""

    source: Label
    kind: Kind
    metrics: Annotated[dict[Label, MetricValue], Field(min_length=1)]
    tenant_id: TenantId = "local"
    tool_id: Label | None = None
    session_id: Label | None = None
    event_id: Label | None = None
    ts: Time | None = None


class IngestBatch(Strict):
    events: Annotated[list[IngestEvent], Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)]


class IngestAccepted(Strict):
    accepted: int
    seq: int


class SampleFilters(Strict):
    """Filters shared by the history routes; each one given narrows the answer."""

    format: Literal["json", "csv", "arrow", "parquet"] | None = None

    metric: Label | None = None
    source: Label | None = None
    tenant_id: TenantId | None = None
    tool_id: Label | None = None
    session_id: Label | None = None


class SeriesParams(SampleFilters):
    from_: Time | None = Field(default=None, alias="from")
    to: Time | None = None
    limit: Annotated[int, Field(ge=1, le=100_000)] = 10_000


class LatestParams(SampleFilters):
    pass


GROUP_LABELS = ("source", "tool_id", "session_id", "tenant_id", "metric")


class IncreaseParams(SampleFilters):
    """`metric` is required; `step` is a whole number and `s`, `m`, `h` or `d`."""

    metric: Label
    from_: Time | None = Field(default=None, alias="from")
    to: Time | None = None
    step: Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,8}[smhd]$")] = "1h"
    group_by: Annotated[str, StringConstraints(max_length=200)] = ""

    def step_seconds(self) -> int:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[self.step[-1]]
        return int(self.step[:-1]) * unit

    def group_labels(self) -> list[str]:
        """The `group_by` labels, in order; raises ValueError naming an unknown one."""
        labels = [label.strip() for label in self.group_by.split(",") if label.strip()]
        for label in labels:
            if label not in GROUP_LABELS:
                raise ValueError(
                    f"group_by: unknown label {label!r}; use any of {', '.join(GROUP_LABELS)}"
                )
        if len(set(labels)) != len(labels):
            raise ValueError("group_by: a label is repeated")
        return labels


class StreamParams(Strict):
    """Query string of `WS /ws/metrics` and `GET /stream/metrics`."""

    tenant_id: TenantId | None = None
    tool_id: Label | None = None
    session_id: Label | None = None
    since: Annotated[str, StringConstraints(max_length=200)] | None = None
    token: Annotated[str, StringConstraints(max_length=4096)] | None = None


# The old service's read routes (`/metrics/*`, `/sessions/{id}/metrics`): its parameter
# names, plus the filters every route here takes.


class LegacyWindow(Strict):
    """The last `hours` hours up to now."""

    hours: Annotated[int, Field(ge=1, le=8760)] = 24
    tenant_id: TenantId | None = None


class LegacyToolWindow(LegacyWindow):
    tool_id: Label | None = None


class LegacyHistoryParams(LegacyToolWindow):
    limit: Annotated[int, Field(ge=1, le=100_000)] = 10_000


class LegacyTokenSavingsParams(LegacyToolWindow):
    hours: Annotated[int, Field(ge=1, le=720)] = 24


class LegacyCompareParams(LegacyWindow):
    """`tool_ids=a,b` or `tool_ids=a&tool_ids=b`."""

    tool_ids: Annotated[list[Annotated[str, StringConstraints(max_length=2000)]],
                        Field(min_length=1)]  # fmt: skip

    def tools(self) -> list[str]:
        """The tool ids in order, once each; raises ValueError if any is empty."""
        ids = [t.strip() for value in self.tool_ids for t in value.split(",")]
        if not all(ids):
            raise ValueError("tool_ids: an empty tool id; give comma-separated tool ids")
        if any(len(t) > 200 for t in ids):
            raise ValueError("tool_ids: a tool id is longer than 200 characters")
        return list(dict.fromkeys(ids))


class LegacyCurrentParams(Strict):
    tenant_id: TenantId | None = None
    tool_id: Label | None = None
    session_id: Label | None = None


class LegacySessionParams(Strict):
    tenant_id: TenantId | None = None


class NoParams(Strict):
    """A route that takes no query parameters (so an unknown one is a 422)."""


class TenantParams(Strict):
    """`?tenant_id=` of the settings routes (the default tenant without it)."""

    tenant_id: TenantId = "local"
