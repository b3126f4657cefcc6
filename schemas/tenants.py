"""Per-tenant settings, with the old service's field names, and what each one means.

The settings in force live in a `TenantRegistry` that the settings routes change and the
collection jobs, the collector and the stream hub follow, so a change takes effect
without a restart. Every change is also appended to `tenant_settings` (its history).
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal, NamedTuple

import duckdb
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger("omnimetrics.tenants")

Profile = Literal["high_frequency", "low_frequency", "batch_only", "disabled"]
DEFAULT_TENANT = "local"

MAX_EVENTS_PER_MINUTE = 1_000_000_000  # far above any use; keeps the number a JSON int64

# batch_only collects once a minute and streams nothing; disabled collects nothing.
BATCH_ONLY_INTERVAL_SECONDS = 60


class Features(BaseModel):
    """What the tenant collects: a feature switched off stops collecting its sources."""

    model_config = ConfigDict(extra="forbid")

    compression: bool = True
    embeddings: bool = True
    workflows: bool = True
    response_cache: bool = True


FEATURES = tuple(Features.model_fields)


class TenantSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metrics_streaming: bool = True
    collection_interval_seconds: Annotated[int, Field(ge=1, le=60)] = 1
    max_events_per_minute: Annotated[int, Field(gt=0, le=MAX_EVENTS_PER_MINUTE)] = 60
    features: Features = Features()
    performance_profile: Profile = "high_frequency"
    # Raw samples kept this many days, if shorter than the service keeps them (None: as
    # the service keeps them); the rollups are kept as the service keeps them.
    retention_days: Annotated[int, Field(ge=1, le=36_500)] | None = None


class FeaturesUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    compression: bool | None = None
    embeddings: bool | None = None
    workflows: bool | None = None
    response_cache: bool | None = None


class SettingsUpdate(BaseModel):
    """A `PUT /settings` body: the fields given change, the others keep their values.
    Choosing a `performance_profile` applies its preset first; fields given with it win."""

    model_config = ConfigDict(extra="forbid")

    metrics_streaming: bool | None = None
    collection_interval_seconds: Annotated[int, Field(ge=1, le=60)] | None = None
    max_events_per_minute: Annotated[int, Field(gt=0, le=MAX_EVENTS_PER_MINUTE)] | None = None
    features: FeaturesUpdate | None = None
    performance_profile: Profile | None = None
    retention_days: Annotated[int, Field(ge=1, le=36_500)] | None = None

    def apply(self, current: TenantSettings) -> TenantSettings:
        doc = current.model_dump()
        if self.performance_profile is not None:
            # A profile presets collection and streaming; it keeps the tenant's retention.
            doc.update(PROFILES[self.performance_profile].preset.model_dump(
                exclude={"retention_days"}))  # fmt: skip
        given = self.model_dump(exclude_unset=True, exclude_none=True)
        features = given.pop("features", {})
        doc.update(given)
        doc["features"].update(features)
        return TenantSettings.model_validate(doc)


class ProfileInfo(NamedTuple):
    description: str
    preset: TenantSettings


def _preset(
    profile: Profile, interval: int, events: int, streaming: bool, on: bool
) -> TenantSettings:
    features = Features(compression=on, embeddings=on, workflows=on, response_cache=on)
    return TenantSettings(
        metrics_streaming=streaming,
        collection_interval_seconds=interval,
        max_events_per_minute=events,
        features=features,
        performance_profile=profile,
    )


PROFILES: dict[Profile, ProfileInfo] = {
    "high_frequency": ProfileInfo(
        "Collect every second and stream every batch: the most real-time, the most load",
        _preset("high_frequency", 1, 60, True, True),
    ),
    "low_frequency": ProfileInfo(
        "Collect and stream every 5 seconds",
        _preset("low_frequency", 5, 30, True, True),
    ),
    "batch_only": ProfileInfo(
        "Collect once a minute and stream nothing: history and REST only",
        _preset("batch_only", BATCH_ONLY_INTERVAL_SECONDS, 10, False, True),
    ),
    "disabled": ProfileInfo(
        "Collect nothing and stream nothing",
        _preset("disabled", BATCH_ONLY_INTERVAL_SECONDS, 1, False, False),
    ),
}


def profiles_document() -> dict[str, Any]:
    """`GET /settings/profiles`: each profile with its description and its fields."""
    return {
        name: {"description": info.description,
               **info.preset.model_dump(exclude={"performance_profile", "retention_days"})}
        for name, info in PROFILES.items()
    }  # fmt: skip


def collection_interval(settings: TenantSettings) -> float | None:
    """Seconds between collection ticks for a tenant, or None when it collects nothing."""
    if settings.performance_profile == "disabled":
        return None
    if settings.performance_profile == "batch_only":
        return BATCH_ONLY_INTERVAL_SECONDS
    return settings.collection_interval_seconds


def feature_enabled(settings: TenantSettings, feature: str | None) -> bool:
    """Whether sources of `feature` are collected (a source of no feature always is)."""
    return feature is None or bool(getattr(settings.features, feature, True))


class StreamPolicy(NamedTuple):
    """What the settings mean for a stream: refused (with the reason) or paced."""

    refusal: str | None
    per_minute: float  # `metrics` messages to one client, on average; 0: no limit
    interval_seconds: float | None = None  # how often the tenant collects


def stream_policy(settings: TenantSettings) -> StreamPolicy:
    interval = collection_interval(settings)
    if settings.performance_profile in ("batch_only", "disabled"):
        profile = settings.performance_profile
        reason = f"metrics streaming is off: performance profile {profile!r}"
        return StreamPolicy(reason, 0.0, interval)
    if not settings.metrics_streaming:
        return StreamPolicy("metrics streaming is disabled in settings", 0.0, interval)
    return StreamPolicy(None, float(settings.max_events_per_minute), interval)


Listener = Callable[[str, TenantSettings], None]


class TenantRegistry:
    """The settings in force per tenant; defaults for a tenant never set."""

    def __init__(self, initial: dict[str, TenantSettings] | None = None) -> None:
        self._settings = dict(initial or {})
        self._listeners: list[Listener] = []
        self.changing = asyncio.Lock()  # one read-modify-write of settings at a time

    def get(self, tenant_id: str) -> TenantSettings:
        return self._settings.get(tenant_id) or TenantSettings()

    def policy(self, tenant_id: str) -> StreamPolicy:
        return stream_policy(self.get(tenant_id))

    def set(self, tenant_id: str, settings: TenantSettings) -> None:
        """Put new settings in force and tell every listener (they must not block)."""
        self._settings[tenant_id] = settings
        for listener in list(self._listeners):
            listener(tenant_id, settings)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def all(self) -> dict[str, TenantSettings]:
        """Every tenant's settings that were ever set."""
        return dict(self._settings)

    def retention_days(self) -> dict[str, int]:
        """Each tenant's own raw retention, where it set one."""
        return {t: s.retention_days for t, s in self._settings.items()
                if s.retention_days is not None}  # fmt: skip


# The newest row per tenant is in force; older rows are its history.
_CURRENT = """
SELECT tenant_id, settings FROM tenant_settings
QUALIFY row_number() OVER (PARTITION BY tenant_id ORDER BY changed_at DESC) = 1
"""
_TIMES = """
SELECT min(changed_at), max(changed_at) FROM tenant_settings WHERE tenant_id = $tenant_id
"""


def load_tenant_settings(cur: duckdb.DuckDBPyConnection) -> dict[str, TenantSettings]:
    """The settings in force for every tenant that has any stored (a stored document that
    no longer validates is logged and replaced by the defaults, never fatal)."""
    out = {}
    for tenant_id, doc in cur.execute(_CURRENT).fetchall():
        try:
            out[tenant_id] = TenantSettings.model_validate_json(doc)
        except ValidationError as exc:
            log.error(
                "stored settings of tenant %s are invalid, using defaults: %s", tenant_id, exc
            )
    return out


def settings_times(cur: duckdb.DuckDBPyConnection, tenant_id: str) -> tuple[Any, Any]:
    """When the tenant's settings were first and last set (None, None if never)."""
    first, last = cur.execute(_TIMES, {"tenant_id": tenant_id}).fetchall()[0]
    return first, last
