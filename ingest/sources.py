"""What a source is, and how a JSON metric's kind is decided."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from schemas.rows import Kind

Format = Literal["json", "prometheus"]

# A JSON number is a counter unless its last path element names a gauge (CONTRACT.md).
GAUGE_WORDS = (
    "rate", "ratio", "avg", "mean", "percent", "latency", "current", "active", "size", "score",
)  # fmt: skip


def default_kind(metric: str) -> Kind:
    last = metric.rsplit(".", 1)[-1].lower()
    return "gauge" if any(word in last for word in GAUGE_WORDS) else "counter"


@dataclass(frozen=True)
class Source:
    """One upstream scraped every tick of its tenant."""

    name: str
    url: str
    format: Format = "json"
    tenant_id: str = "local"
    tool_id: str | None = None
    timeout_seconds: float = 2.0
    kinds: Mapping[str, Kind] = field(default_factory=dict)  # by (bare) metric name
    sample_limit: int = 10_000  # more samples in one scrape fail it whole (up = 0)
    feature: str | None = None  # the tenant feature that switches it on and off

    def kind_of(self, metric: str) -> Kind:
        return self.kinds.get(metric) or default_kind(metric)
