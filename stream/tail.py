"""The one tail per process: woken by the writer's commit signal, it reads the new rows
once and hands them to the hub, and to the publisher when there is one (a Redis Stream:
stream/redis_stream.py). No per-client query, no per-client upstream poll."""

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial

from schemas.db import Database
from schemas.signals import Appended
from stream.batches import known_series
from stream.hub import Hub
from stream.live import SeriesCache, read_live
from stream.redis_stream import Chunk

log = logging.getLogger("omnimetrics.stream")

RETRY_SECONDS = 1.0


class Tail:
    def __init__(
        self, db: Database, hub: Hub, publish: Callable[[Chunk], None] | None = None
    ) -> None:
        self._db = db
        self._hub = hub
        self._publish = publish  # never waits (what it cannot take, it reads itself)
        self._target = hub.position
        self._committed_at: float | None = None  # the oldest commit not yet dispatched
        self._wake = asyncio.Event()
        self._cache = SeriesCache(known=known_series(hub.epoch))

    def notify(self, appended: Appended) -> None:
        """The writer's listener: never blocks, just records how far there is to read."""
        self._target = max(self._target, appended.last_seq)
        if self._committed_at is None:
            # The commit's own time (the writer's thread, wall clock) on this clock, so the
            # hand-off to the loop counts too.
            self._committed_at = time.perf_counter() - max(0.0, time.time() - appended.committed_at)
        self._wake.set()

    async def run(self) -> None:
        """Read and dispatch until cancelled; a failed read is retried, never fatal."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            after, upto, committed_at = self._hub.position, self._target, self._committed_at
            self._committed_at = None
            if upto <= after:
                continue
            if not len(self._hub) and self._publish is None:
                # Nobody watches: nothing to read. A client that joins from here on starts
                # after `upto` (and catches up from the database if it resumes). What the
                # cache knows of each series' last sample is now old: forget it.
                self._hub.position = upto
                self._cache = SeriesCache(known=self._cache.known)
                continue
            try:
                batches = await self._db.read(
                    partial(read_live, cache=self._cache, after=after, upto=upto)
                )
            except Exception:
                log.exception("stream tail could not read seq %d..%d; retrying", after, upto)
                await asyncio.sleep(RETRY_SECONDS)
                self._committed_at = committed_at
                self._wake.set()
                continue
            self._hub.dispatch(batches, upto, committed_at)
            if self._publish is not None:
                self._publish(Chunk(after, upto, batches))
