"""How many pushed events a tenant may send: per request, and per minute (a token bucket
holding a minute's worth, refilled continuously)."""

import math
import time
from dataclasses import dataclass, field


class OverLimit(Exception):
    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class EventBudget:
    per_request: int = 10_000
    per_minute: int = 1_000_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # tokens, when

    def take(self, tenant_id: str, n: int, now: float | None = None) -> None:
        """Spend `n` events of the tenant's minute, or raise OverLimit (spending nothing)."""
        now = time.monotonic() if now is None else now
        rate = self.per_minute / 60
        tokens, stamp = self._buckets.get(tenant_id, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - stamp) * rate)
        if n > tokens:
            wait = math.ceil((n - tokens) / rate) if n <= self.per_minute else 60
            self._buckets[tenant_id] = (tokens, now)
            raise OverLimit(
                f"tenant {tenant_id!r} is over its {self.per_minute} events per minute",
                max(1, wait),
            )
        self._buckets[tenant_id] = (tokens - n, now)
