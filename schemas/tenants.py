"""Per-tenant settings, with the old service's field names, and what they mean for jobs."""

from typing import Annotated, Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field

Profile = Literal["high_frequency", "low_frequency", "batch_only", "disabled"]

# batch_only collects once a minute and streams nothing; disabled collects nothing.
BATCH_ONLY_INTERVAL_SECONDS = 60


class TenantSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metrics_streaming: bool = True
    collection_interval_seconds: Annotated[int, Field(ge=1, le=60)] = 1
    max_events_per_minute: Annotated[int, Field(gt=0)] = 600
    features: dict[str, bool] = Field(default_factory=dict)
    performance_profile: Profile = "high_frequency"


def collection_interval(settings: TenantSettings) -> float | None:
    """Seconds between collection ticks for a tenant, or None when it collects nothing."""
    if settings.performance_profile == "disabled":
        return None
    if settings.performance_profile == "batch_only":
        return BATCH_ONLY_INTERVAL_SECONDS
    return settings.collection_interval_seconds


# The newest row per tenant is in force; older rows are its history.
_CURRENT = """
SELECT tenant_id, settings FROM tenant_settings
QUALIFY row_number() OVER (PARTITION BY tenant_id ORDER BY changed_at DESC) = 1
"""


def load_tenant_settings(cur: duckdb.DuckDBPyConnection) -> dict[str, TenantSettings]:
    """The settings in force for every tenant that has any stored."""
    return {
        tenant_id: TenantSettings.model_validate_json(doc)
        for tenant_id, doc in cur.execute(_CURRENT).fetchall()
    }
