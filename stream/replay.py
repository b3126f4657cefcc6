"""Admission for catch-up: however many clients resume at once, a bounded number of them
catch up at a time, and only a few catch-up reads run at once (each one shared by the
clients catching up near it: stream/pages.py).

Each page read takes a slot and gives it back, so clients far behind take turns with the
others page by page, in the order they asked (asyncio's semaphore wakes its waiters first
come, first served, and a newcomer never takes a slot past them). Turning a page into a
client's messages and writing them takes a turn too, a couple per round of the event
loop (`turn`, stream/rounds.py): however many clients catch up, a round holds only a
couple of pages, and a request that comes in meanwhile waits for little. A client that
would pass the bound on clients catching up is told to come back after a few seconds,
jittered so that a crowd refused together does not return together.
"""

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

from stream.pages import SharedPages
from stream.rounds import Rounds

DEFAULT_READS = 2  # the database's threads, here
# Clients turning a page into messages and writing it, per round of the event loop: a
# couple, so a round never holds a thousand pages (and everything else waits a round).
TURNS = 2
DEFAULT_CLIENTS = 1_000
RETRY_SECONDS = (1, 5)  # the retry hint: a whole number of seconds in this range


class Ticket:
    """One client's place among those catching up; `leave` is idempotent."""

    __slots__ = ("_gate", "_left")

    def __init__(self, gate: "ReplayGate") -> None:
        self._gate = gate
        self._left = False

    def leave(self) -> None:
        if not self._left:
            self._left = True
            self._gate.replaying -= 1

    def __del__(self) -> None:
        # A stream that never started (its peer left before the first byte) never reached
        # its `finally`: the place is given back when the ticket goes.
        self.leave()


class ReplayGate:
    def __init__(
        self,
        reads: int = DEFAULT_READS,
        clients: int = DEFAULT_CLIENTS,
        shared: SharedPages | None = None,
    ) -> None:
        self.max_reads = reads
        self.max_clients = clients
        self.replaying = 0  # clients catching up now (reading or waiting for a slot)
        self.reading = 0
        self.refused = 0  # since start
        self.pages = 0  # page reads, since start
        self.served = 0  # pages written to clients (shared or not), since start
        self._slots = asyncio.Semaphore(reads)
        self._turns = Rounds(TURNS)
        self.shared = shared or SharedPages()  # pages read once for clients nearby

    def enter(self) -> Ticket | int:
        """A place to catch up from, or the seconds after which to try again."""
        if self.replaying >= self.max_clients:
            self.refused += 1
            return random.randint(*RETRY_SECONDS)
        self.replaying += 1
        return Ticket(self)

    async def turn(self) -> None:
        """A turn, this round, to turn a page that has been read into a client's messages
        and write them (nothing in that may wait)."""
        await self._turns.turn()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[None]:
        """Hold one of the read slots for one page."""
        async with self._slots:
            self.reading += 1
            self.pages += 1
            try:
                yield
            finally:
                self.reading -= 1
