"""Settings, read once from the environment (`OMNIMETRICS_*`) and flags, plus the config file.

One more is Arrow's own, `ARROW_DEFAULT_MEMORY_POOL`: the allocator of its buffers, read by
Arrow once, when pyarrow is imported, so it is given its default here, before this module's
imports import pyarrow (the package's `__init__` imports this module first). On Linux it is
jemalloc unless the variable names another pool. On pyarrow's default, mimalloc, a
20-minute soak's RSS grew 25% from minute 5 to the end, all of it in mimalloc's reserved
region while Arrow's count of what it held stayed at 1-3 MiB; on jemalloc the same soak
grew +6.3%, flat from minute 12 (BENCHMARKS.md). `pa.set_memory_pool` after the import is
not enough: a kernel's own buffers still come from the pool Arrow chose.
"""

import os
import sys

ARROW_POOL = "jemalloc"
if sys.platform.startswith("linux"):
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", ARROW_POOL)

import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.sources import Source
from omnimetrics.logs import LogFormat
from schemas.http import describe_errors
from schemas.models import Label, TenantId
from schemas.rows import Kind
from schemas.tenants import FEATURES, SettingsUpdate

Port = Annotated[int, Field(ge=1, le=65535)]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DURATION = re.compile(r"([0-9]{1,6})([smhdw])")


def _duration(value: object) -> object:
    """`30d`, `12h`, `90m`, `3600s`, `2w` as a timedelta; anything else as pydantic reads
    a timedelta (seconds, ISO 8601), which also says what is wrong."""
    if isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        return timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
LOOPBACK_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?"


class Settings(BaseSettings):
    """Everything the process is told at start; every field has an `OMNIMETRICS_` twin."""

    model_config = SettingsConfigDict(env_prefix="OMNIMETRICS_", extra="ignore")

    config: Path | None = None
    db: Path = Path("data/omnimetrics.duckdb")
    host: str = "127.0.0.1"
    port: Port = 8003
    demo: bool = False
    demo_embeddings_port: Port = 8000
    demo_compression_port: Port = 8001
    memory_limit: str = "1GB"
    threads: Annotated[int, Field(ge=1, le=256)] = 2
    stream_queue_bytes: Annotated[int, Field(ge=64 * 1024)] = 1024 * 1024
    socket_send_buffer_bytes: Annotated[int, Field(ge=4096)] = 256 * 1024
    sse_keepalive_seconds: Annotated[float, Field(gt=0, le=300)] = 15.0
    # Notebooks read a Parquet mirror at most this old (CONTRACT.md: at most 60 s).
    export_interval_seconds: Annotated[float, Field(gt=0, le=55)] = 30.0
    rollup_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # Retention (schemas/retention.py): raw samples, the 1 m rollups (only for time after
    # raw samples: none when kept no longer than they are), the 1 h and 1 d rollups (at
    # least as long as either); each at least a day.
    retention_raw: Duration = timedelta(days=30)
    retention_minute: Duration = timedelta(days=30)
    retention_rollup: Duration = timedelta(days=400)
    retention_interval: Duration = timedelta(hours=1)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: LogFormat = "text"  # or "json", a line per record (omnimetrics/logs.py)

    # Auth (SECURITY.md): off unless a secret is set; then every route but /health and
    # the dashboard's static files needs `Authorization: Bearer <HS256 JWT>`.
    jwt_secret: Annotated[SecretStr, Field(min_length=32)] | None = None
    # Browser origins allowed for CORS and WebSocket `Origin`, comma-separated; empty
    # means same origin only. "*" allows any origin, but then never with credentials.
    allowed_origins: str = ""
    metrics_public: bool = False  # with auth on, `/metrics` needs scope admin unless true
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    # Limits (each a 4xx/1013 with a reason and a retry hint when exceeded).
    max_streams: Annotated[int, Field(ge=1)] = 10_000
    max_streams_per_tenant: Annotated[int, Field(ge=1)] = 5_000
    new_streams_per_second: Annotated[float, Field(gt=0)] = 500.0
    # Catch-up (stream/replay.py): clients catching up at once (more are told to retry),
    # and catch-up page reads at once.
    max_replaying_clients: Annotated[int, Field(ge=0)] = 1_000
    max_replay_reads: Annotated[int, Field(ge=1, le=64)] = 2
    max_body_bytes: Annotated[int, Field(ge=1024, le=1024**3)] = 10 * 1024 * 1024
    max_events_per_request: Annotated[int, Field(ge=1, le=100_000)] = 10_000
    max_ingest_events_per_minute: Annotated[int, Field(ge=1)] = 1_000_000
    max_series_per_tenant: Annotated[int, Field(ge=1)] = 1_000_000
    # Redis Streams (CONTRACT.md "Gateways"): with a URL, every committed batch is also
    # appended to `<prefix>:batches`, trimmed to about `redis_maxlen` entries.
    redis_url: Annotated[str, Field(pattern=r"^rediss?://")] | None = None
    redis_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = "omnimetrics"
    redis_maxlen: Annotated[int, Field(ge=1)] = 100_000
    # A gateway (`omnimetrics gateway`): the writer it catches clients up from, its own
    # port, how many processes share it (SO_REUSEPORT), how long it waits at start for a
    # writer that has published to Redis.
    writer_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    gateway_port: Port = 8004
    gateway_workers: Annotated[int, Field(ge=1, le=64)] = 1
    gateway_start_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    # glibc malloc arenas (omnimetrics/memory.py); 0 leaves glibc's own choice.
    malloc_arenas: Annotated[int, Field(ge=0, le=64)] = 2

    @model_validator(mode="after")
    def _retention(self) -> "Settings":
        windows = {"retention_raw": self.retention_raw, "retention_minute": self.retention_minute,
                   "retention_rollup": self.retention_rollup}  # fmt: skip
        for name, window in windows.items():
            if window < timedelta(days=1):
                raise ValueError(f"{name} must be at least 1d (cutoffs are whole days)")
        for finer in ("retention_raw", "retention_minute"):
            if self.retention_rollup < windows[finer]:
                why = "the 1 h and 1 d rollups answer for time finer data no longer covers"
                raise ValueError(f"retention_rollup must be at least {finer}: {why}")
        if not timedelta(minutes=1) <= self.retention_interval <= timedelta(days=1):
            raise ValueError("retention_interval must be from 1m to 1d")
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> "Settings":
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together: give both or neither")
        return self

    def origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()]

    def origin_regex(self) -> str | None:
        """With `--demo` and no origins configured, pages from loopback origins on any
        port (the old dashboard on :8004) may call the API and streams."""
        if self.demo and not self.origins():
            return LOOPBACK_ORIGINS
        return None


class SourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    format: Literal["json", "prometheus"] = "json"
    tenant_id: TenantId = "local"
    tool_id: Label | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    kinds: dict[str, Kind] = Field(default_factory=dict)
    # A scrape with more samples fails whole (up = 0, the error names the limit).
    sample_limit: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    # The tenant feature that switches this source off; by default the feature named like
    # the source (`embeddings`, `compression`, ...), else none: always collected.
    feature: Literal["compression", "embeddings", "workflows", "response_cache"] | None = None

    def to_source(self) -> Source:
        doc = self.model_dump()
        if doc["feature"] is None and self.name in FEATURES:
            doc["feature"] = self.name
        return Source(**doc)


class Config(BaseModel):
    """The TOML config file: sources and initial tenant settings."""

    model_config = ConfigDict(extra="forbid")

    # None: the old service's default sources; an empty list: no sources at all.
    sources: list[SourceConfig] | None = None
    # Initial settings per tenant, as a PUT /settings body (a profile brings its preset).
    tenants: dict[TenantId, SettingsUpdate] = Field(default_factory=dict)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig] | None) -> list[SourceConfig] | None:
        seen = set()
        for source in sources or ():
            key = (source.tenant_id, source.name)
            if key in seen:
                raise ValueError(f"source {source.name!r} is defined twice in {source.tenant_id!r}")
            seen.add(key)
        return sources


class ConfigError(Exception):
    """A config problem, as one line fit to show a user."""


def load_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    try:
        return Config.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"config file {path}: {describe_errors(exc.errors())}") from None


def sources_for(settings: Settings, config: Config) -> list[Source]:
    """The configured sources, or the old service's two when none are configured."""
    if config.sources is not None:
        return [s.to_source() for s in config.sources]
    embeddings, compression = 8000, 8001
    if settings.demo:
        embeddings, compression = settings.demo_embeddings_port, settings.demo_compression_port
    sources = [
        Source("embeddings", f"http://127.0.0.1:{embeddings}/stats", feature="embeddings"),
        Source("compression", f"http://127.0.0.1:{compression}/stats", feature="compression"),
    ]
    own = _own_metrics_url(settings)
    if settings.demo and own is not None:  # the demo watches itself too
        sources.append(Source("omnimetrics", own, format="prometheus", tenant_id=SELF_TENANT))
    return sources


# The demo's scrape of its own `/metrics` is a tenant of its own, ticking every 10 s: its
# ~130 series stay out of the demo's `local` data and streams.
SELF_TENANT = "omnimetrics"
SELF_INTERVAL_SECONDS = 10


def with_demo_tenants(settings: Settings, config: Config) -> Config:
    """`config`, with the demo's own tenant's interval unless the config sets that tenant."""
    if not settings.demo or config.sources is not None or SELF_TENANT in config.tenants:
        return config
    own = SettingsUpdate(collection_interval_seconds=SELF_INTERVAL_SECONDS)
    return config.model_copy(update={"tenants": {**config.tenants, SELF_TENANT: own}})


def _own_metrics_url(settings: Settings) -> str | None:
    """Where this server's `/metrics` answers over loopback; None where a scrape of its
    own could not read it (TLS, or auth without `metrics_public`)."""
    if settings.ssl_certfile is not None:
        return None
    if settings.jwt_secret is not None and not settings.metrics_public:
        return None
    host = settings.host
    if host in ("0.0.0.0", "", "localhost"):
        host = "127.0.0.1"
    elif host == "::" or ":" in host:
        host = "[::1]" if host == "::" else f"[{host}]"
    return f"http://{host}:{settings.port}/metrics"
