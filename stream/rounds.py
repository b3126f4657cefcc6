"""A few turns per round of the event loop, for work that never waits once it starts.

A semaphore bounds how many hold it at once, not how much runs in one round: a thousand
tasks woken together (a shared page read has come in) each find it free in turn, do
their work and give it back, all in the same round, and everything else waits for them
all. Here at most `per_round` turns are given out each round; the rest wait, first come
first served, for the rounds after.
"""

import asyncio
from collections import deque


class Rounds:
    def __init__(self, per_round: int) -> None:
        self.per_round = per_round
        self._left = per_round
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._scheduled = False

    async def turn(self) -> None:
        """Return when this task may do its piece of work in the current round."""
        if self._left > 0 and not self._waiting:
            self._left -= 1
            self._refill_next_round()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._refill_next_round()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._left += 1  # given a turn it will not use
            raise

    def _refill_next_round(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._refill)

    def _refill(self) -> None:
        self._scheduled = False
        self._left = self.per_round
        while self._waiting and self._left > 0:
            waiter = self._waiting.popleft()
            if not waiter.done():  # not cancelled meanwhile
                waiter.set_result(None)
                self._left -= 1
        if self._waiting or self._left < self.per_round:
            self._refill_next_round()
