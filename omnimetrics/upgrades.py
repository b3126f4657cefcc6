"""uvicorn's httptools protocol, with WebSocket upgrades taking turns.

A thousand clients reconnecting at once send a thousand upgrade requests within a few
milliseconds. uvicorn handles each one where its bytes are read (a second parse by
wsproto, the handshake, the connection's task): about half a millisecond each, all in
the same round of the event loop, so a plain request that arrives meanwhile (`/health`,
a push) waits for every one of them: over a second. Here an upgrade request is parsed
as usual, then queued, and the queue is worked through a few at a time per round of the
loop, in arrival order; everything else goes on between. Nothing is read from such a
connection meanwhile (a client waits for the 101 before it sends), and one closed while
it waits is dropped from the queue.
"""

import asyncio
import weakref
from collections import deque

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

UPGRADES_PER_ROUND = 8


class _Upgrades:
    """The upgrades waiting for their turn, in one event loop."""

    def __init__(self) -> None:
        self.waiting: deque[TurnTakingHttpProtocol] = deque()
        self.scheduled = False

    def add(self, protocol: "TurnTakingHttpProtocol", loop: asyncio.AbstractEventLoop) -> None:
        self.waiting.append(protocol)
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self.run, loop)

    def run(self, loop: asyncio.AbstractEventLoop) -> None:
        for _ in range(min(UPGRADES_PER_ROUND, len(self.waiting))):
            self.waiting.popleft().upgrade_now()
        self.scheduled = bool(self.waiting)
        if self.scheduled:
            loop.call_soon(self.run, loop)  # the next round: after what is ready now


_queues: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Upgrades]" = (
    weakref.WeakKeyDictionary()
)


class TurnTakingHttpProtocol(HttpToolsProtocol):
    _upgrade_queued = False

    def handle_websocket_upgrade(self) -> None:
        if self._upgrade_queued:
            return  # bytes before the 101: the upgrade is on its way
        self._upgrade_queued = True
        queue = _queues.get(self.loop)
        if queue is None:
            queue = _queues[self.loop] = _Upgrades()
        queue.add(self, self.loop)

    def upgrade_now(self) -> None:
        if self.transport.is_closing():
            return  # the client left while it waited
        super().handle_websocket_upgrade()
