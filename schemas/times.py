"""RFC 3339 UTC times, as every route and message writes them."""

from datetime import UTC, datetime


def rfc3339(ts: datetime) -> str:
    """`2026-01-13T10:30:45.123Z`: UTC, millisecond precision, a `Z` suffix."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utcnow() -> datetime:
    return datetime.now(UTC)
