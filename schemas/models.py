"""Pydantic models of every REST body and query string (the edges only)."""

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from schemas.labels import (
    MAX_NAME_BYTES,
    LabelError,
    Labels,
    canonical,
    parse_filter,
    parse_text_form,
)
from schemas.rows import Kind

MAX_EVENTS_PER_REQUEST = 100_000  # the hard cap; the configured limit is lower

_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"  # no control characters in names
Label = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_PRINTABLE)]
TenantId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
MetricValue = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def _name_bytes(name: str) -> str:
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"longer than {MAX_NAME_BYTES} bytes")
    return name


# A metric's name, as stored and queried: the same cap everywhere (CONTRACT.md).
MetricName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_BYTES, pattern=_PRINTABLE),
    AfterValidator(_name_bytes),
]

EARLIEST = datetime(1970, 1, 2, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339_text(value: Any) -> Any:
    if isinstance(value, datetime):  # from Python callers
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 time with a zone, e.g. 2026-01-13T10:30:45Z")
    return value


def _in_range(ts: datetime) -> datetime:
    if not EARLIEST <= ts < LATEST:
        raise ValueError(f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return ts


# A time as the routes take it: RFC 3339 text with a zone, in a range every computation
# can hold. (Unix numbers are refused: the contract says RFC 3339.)
Time = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text), AfterValidator(_in_range)]


def _labels(value: dict[str, str]) -> dict[str, str]:
    try:
        return dict(canonical(value))
    except LabelError as exc:
        raise ValueError(str(exc)) from None


# A pushed label set, canonical once validated (keys sorted, empty values dropped).
LabelSet = Annotated[dict[str, str], AfterValidator(_labels)]


def _metric_text(value: str | None) -> str | None:
    if value is not None and "{" in value:
        try:
            parse_text_form(value)
        except LabelError as exc:
            raise ValueError(str(exc)) from None
    return value


def _label_filter(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_filter(value, "labels")
        except LabelError as exc:
            raise ValueError(str(exc).removeprefix("labels: ")) from None
    return value


# `metric=` as the routes take it: the bare name, or one series' text form.
MetricQuery = Annotated[MetricName, AfterValidator(_metric_text)]
# `labels=` (and the streams' `tags=`): a JSON object of exact matches.
LabelFilter = Annotated[str, StringConstraints(max_length=40_000), AfterValidator(_label_filter)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestEvent(Strict):
    """One pushed observation of one or more metrics from one source."""

    source: Label
    kind: Kind
    metrics: Annotated[dict[MetricName, MetricValue], Field(min_length=1)]
    labels: LabelSet | None = None
    tenant_id: TenantId = "local"
    tool_id: Label | None = None
    session_id: Label | None = None
    event_id: Label | None = None
    ts: Time | None = None

    @model_validator(mode="after")
    def _counters_not_negative(self) -> "IngestEvent":
        if self.kind in ("counter", "untyped"):
            for name, value in self.metrics.items():
                if value < 0:
                    raise ValueError(f"metrics.{name}: a counter is >= 0 (got {value:g})")
        return self


class IngestBatch(Strict):
    events: Annotated[list[IngestEvent], Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)]


class IngestAccepted(Strict):
    accepted: int
    seq: int


class SampleFilters(Strict):
    """Filters shared by the history routes; each one given narrows the answer."""

    format: Literal["json", "csv", "arrow", "parquet"] | None = None

    metric: MetricQuery | None = None
    source: Label | None = None
    tenant_id: TenantId | None = None
    tool_id: Label | None = None
    session_id: Label | None = None
    labels: LabelFilter | None = None

    def label_filter(self) -> Labels:
        """The `labels` exact matches (an empty value matches a series without it)."""
        return parse_filter(self.labels, "labels") if self.labels else ()


class SeriesParams(SampleFilters):
    from_: Time | None = Field(default=None, alias="from")
    to: Time | None = None
    limit: Annotated[int, Field(ge=1, le=100_000)] = 10_000


class LatestParams(SampleFilters):
    limit: Annotated[int, Field(ge=1, le=100_000)] = 10_000


GROUP_LABELS = ("source", "tool_id", "session_id", "tenant_id", "metric")
LABEL_GROUP = re.compile(r"labels\.([a-zA-Z_][a-zA-Z0-9_]*)")


class IncreaseParams(SampleFilters):
    """`metric` is required; `step` is a whole number and `s`, `m`, `h` or `d`."""

    metric: MetricQuery
    from_: Time | None = Field(default=None, alias="from")
    to: Time | None = None
    step: Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,8}[smhd]$")] = "1h"
    group_by: Annotated[str, StringConstraints(max_length=2000)] = ""

    def step_seconds(self) -> int:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[self.step[-1]]
        return int(self.step[:-1]) * unit

    def group_labels(self) -> list[str]:
        """The `group_by` labels, in order (a fixed one or `labels.NAME`); raises
        ValueError naming an unknown one."""
        labels = [label.strip() for label in self.group_by.split(",") if label.strip()]
        for label in labels:
            if label not in GROUP_LABELS and not LABEL_GROUP.fullmatch(label):
                raise ValueError(
                    f"group_by: unknown label {label!r}; use any of {', '.join(GROUP_LABELS)} "
                    "or labels.NAME"
                )
        if len(set(labels)) != len(labels):
            raise ValueError("group_by: a label is repeated")
        return labels


MAX_CURSOR_CHARS = 200
# A resume cursor, `since=` or `Last-Event-ID`: the same cap for both.
Cursor = Annotated[str, StringConstraints(max_length=MAX_CURSOR_CHARS)]


class StreamFilter(Strict):
    """What a stream client watches (and a replay reads): tenant, tool, session, labels."""

    tenant_id: TenantId | None = None
    tool_id: Label | None = None
    session_id: Label | None = None
    labels: LabelFilter | None = None
    tags: LabelFilter | None = None  # the old service's name for `labels`

    def label_filter(self) -> Labels:
        """`labels` and `tags` together (both exact matches; `labels` wins on a name both
        give)."""
        pairs = dict(parse_filter(self.tags, "tags")) if self.tags else {}
        pairs.update(parse_filter(self.labels, "labels") if self.labels else ())
        return tuple(sorted(pairs.items()))


class StreamParams(StreamFilter):
    """Query string of `WS /ws/metrics` and `GET /stream/metrics`."""

    since: Cursor | None = None
    token: Annotated[str, StringConstraints(max_length=4096)] | None = None


MAX_BATCHES_LIMIT = 10_000


class BatchesParams(StreamFilter):
    """Query string of `GET /api/v1/batches`: from the first stored batch without `since`."""

    since: Cursor | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_BATCHES_LIMIT)] = 1_000


# The old service's read routes (`/metrics/*`, `/sessions/{id}/metrics`): its parameter
# names, plus the filters every route here takes.


class LegacyWindow(Strict):
    """The last `hours` hours up to now."""

    hours: Annotated[int, Field(ge=1, le=8760)] = 24
    tenant_id: TenantId | None = None


class LegacyToolWindow(LegacyWindow):
    tool_id: Label | None = None


class LegacyToolHistoryParams(LegacyWindow):
    """`/metrics/tool/{tool_id}/history` (the tool is in the path)."""

    limit: Annotated[int, Field(ge=1, le=100_000)] = 10_000


class LegacyHistoryParams(LegacyToolHistoryParams):
    tool_id: Label | None = None


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
