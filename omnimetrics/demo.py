"""Simulated upstreams for `serve --demo`: an embeddings and a compression service.

Counters grow at rates that drift over time, gauges wander, and now and then a service
restarts (its counters start again from zero) or is briefly down (HTTP 503), so a new
user sees what omnimetrics does about both.
"""

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

RESTART_CHANCE_PER_SECOND = 1 / 400
OUTAGE_CHANCE_PER_SECOND = 1 / 300
OUTAGE_SECONDS = (2.0, 6.0)


@dataclass
class Simulated:
    """A service's cumulative state, advanced lazily by elapsed time on each request."""

    kind: str
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)
    down_until: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)

    def _rate(self, now: float, base: float, period: float) -> float:
        wave = 1 + 0.6 * math.sin((now - self.started) * 2 * math.pi / period)
        return max(0.0, base * wave * self.rng.uniform(0.6, 1.4))

    def advance(self, now: float) -> None:
        dt = max(0.0, now - self.last)
        self.last = now
        if self.rng.random() < RESTART_CHANCE_PER_SECOND * dt:
            self.counters.clear()
            self.started = now
        if now >= self.down_until and self.rng.random() < OUTAGE_CHANCE_PER_SECOND * dt:
            self.down_until = now + self.rng.uniform(*OUTAGE_SECONDS)
        c = self.counters
        if self.kind == "embeddings":
            requests = self._rate(now, 12, 90) * dt
            c["total_requests"] = c.get("total_requests", 0) + requests
            c["total_embeddings"] = c.get("total_embeddings", 0) + requests * self.rng.uniform(4, 9)
            hits = requests * self.rng.uniform(0.55, 0.9)
            c["cache_hits"] = c.get("cache_hits", 0) + hits
            c["cache_misses"] = c.get("cache_misses", 0) + requests - hits
        else:
            compressions = self._rate(now, 5, 120) * dt
            tokens_in = compressions * self.rng.uniform(800, 2400)
            c["total_compressions"] = c.get("total_compressions", 0) + compressions
            c["total_tokens_in"] = c.get("total_tokens_in", 0) + tokens_in
            c["total_tokens_saved"] = c.get("total_tokens_saved", 0) + tokens_in * self.rng.uniform(
                0.35, 0.7
            )

    def stats(self, now: float) -> dict[str, Any]:
        c = {k: round(v) for k, v in self.counters.items()}
        uptime = round(now - self.started, 1)
        if self.kind == "embeddings":
            looked_up = c.get("cache_hits", 0) + c.get("cache_misses", 0)
            hit_rate = round(c.get("cache_hits", 0) / looked_up, 4) if looked_up else 0.0
            return {
                "status": "healthy",
                "service": "embeddings",
                "model": "all-MiniLM-L6-v2",
                "uptime_seconds": uptime,
                "mlx_metrics": {
                    **c,
                    "cache_hit_rate": hit_rate,
                    "avg_latency_ms": round(self.rng.uniform(4, 18), 2),
                    "active_requests": self.rng.randint(0, 6),
                },
            }
        saved, tokens_in = c.get("total_tokens_saved", 0), c.get("total_tokens_in", 0)
        return {
            "status": "healthy",
            "service": "compression",
            "uptime_seconds": uptime,
            "metrics": {
                **c,
                "avg_compression_ratio": round(saved / tokens_in, 4) if tokens_in else 0.0,
                "active_sessions": self.rng.randint(1, 12),
            },
        }


def demo_app(kind: str, seed: int | None = None) -> Starlette:
    """A `/stats` upstream of the given kind (`embeddings` or `compression`)."""
    sim = Simulated(kind, random.Random(seed))

    async def stats(request: Request) -> JSONResponse:
        now = time.monotonic()
        sim.advance(now)
        if now < sim.down_until:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse(sim.stats(now))

    return Starlette(routes=[Route("/stats", stats)])


class QuietHttpProtocol(HttpToolsProtocol):
    """The demo upstreams' HTTP: no access lines (two a second would drown the log).
    uvicorn decides per connection from the shared `uvicorn.access` logger, so the
    main server's configuration alone cannot tell them apart."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = False
