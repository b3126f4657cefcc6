"""The fan-out: clients grouped by filter, each batch encoded once per filter, and the
bytes put on every matching client's bounded queue. Nothing here ever awaits a client."""

import asyncio
import time
from collections import deque
from collections.abc import Iterable

from stream.batches import Batch
from stream.encode import Filter, Outgoing, encode_batch

DEFAULT_BUDGET_BYTES = 1024 * 1024
DEFAULT_KEEPALIVE_SECONDS = 15.0
FANOUT_TRACKED = 64  # batches whose fan-out is still being timed, at most


class Client:
    """One connection's subscription and its queue, bounded by a byte budget.

    Over budget, the queue is dropped and the client ends with `overflowed` set: the
    connection then tells the client where to resume from (its last sent cursor) and
    closes. The client loses nothing: it resumes from the database. Slotted and with a
    waiter made only while waiting, because there is one of these per open connection.
    """

    __slots__ = (
        "filter", "start_seq", "sent_seq", "budget", "overflowed", "shutdown", "too_big",
        "_ended", "_queue", "_bytes", "_waiter",
    )  # fmt: skip

    def __init__(self, flt: Filter, start_seq: int, budget: int) -> None:
        self.filter = flt
        self.start_seq = start_seq  # the hub's position when it joined: live starts after
        self.sent_seq = start_seq
        self.budget = budget
        self.overflowed = False
        self.shutdown = False
        self.too_big = False
        self._ended = False
        self._queue: deque[Outgoing] = deque()
        self._bytes = 0
        self._waiter: asyncio.Future[None] | None = None

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def offer(self, item: Outgoing) -> None:
        """Queue a message without waiting; over budget, end the connection instead."""
        if self._ended:
            return
        size = len(item.text)
        if self._bytes + size > self.budget:
            self._queue.clear()
            self._bytes = 0
            self.overflowed = True
            self.end()
            return
        self._queue.append(item)
        self._bytes += size
        self._wake()

    def end_for_shutdown(self) -> None:
        self.shutdown = True
        self.end()

    def end(self) -> None:
        """End the connection (the peer left, or it must close); idempotent."""
        self._ended = True
        self._wake()

    async def next(self) -> Outgoing | None:
        """The next message to send, or None once the connection is to end."""
        while not self._queue:
            if self._ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._ended:
            return None
        item = self._queue.popleft()
        self._bytes -= len(item.text)
        return item


class Hub:
    """Who watches what, and the position up to which batches have been handed out."""

    def __init__(
        self,
        epoch: str,
        position: int,
        budget: int = DEFAULT_BUDGET_BYTES,
        keepalive_seconds: float = DEFAULT_KEEPALIVE_SECONDS,
    ) -> None:
        self.epoch = epoch
        self.position = position
        self.budget = budget
        self.keepalive_seconds = keepalive_seconds  # SSE comment lines while idle
        self._by_filter: dict[Filter, set[Client]] = {}
        self._emptied = asyncio.Event()
        self._emptied.set()
        self.closed = False
        # Until the last matching client's send returned: from dispatch (the fan-out
        # itself), and from the writer's commit notice (the server's commit-to-receive).
        self.fanout_ms: deque[float] = deque(maxlen=100)
        self.commit_to_sent_ms: deque[float] = deque(maxlen=100)
        self._pending: dict[int, list[float]] = {}

    def __len__(self) -> int:
        return sum(len(clients) for clients in self._by_filter.values())

    def add(self, flt: Filter) -> Client:
        client = Client(flt, self.position, self.budget)
        if self.closed:
            client.end_for_shutdown()
        self._by_filter.setdefault(flt, set()).add(client)
        self._emptied.clear()
        return client

    def remove(self, client: Client) -> None:
        clients = self._by_filter.get(client.filter)
        if clients is not None:
            clients.discard(client)
            if not clients:
                del self._by_filter[client.filter]
        if not self._by_filter:
            self._emptied.set()

    def move(self, client: Client, flt: Filter) -> None:
        """Change a client's filter; it applies from the next batch on."""
        self.remove(client)
        if client.ended:
            return
        client.filter = flt
        self._by_filter.setdefault(flt, set()).add(client)
        self._emptied.clear()

    def dispatch(
        self, batches: Iterable[Batch], upto: int, committed_at: float | None = None
    ) -> None:
        """Hand out batches (in seq order) up to `upto`: one encoding per distinct filter.
        `committed_at` (perf_counter) is when the writer's notice arrived."""
        dispatched = time.perf_counter()
        committed = committed_at if committed_at is not None else dispatched
        for batch in batches:
            for flt, clients in list(self._by_filter.items()):
                for item in encode_batch(batch, flt, self.epoch):
                    for client in list(clients):
                        client.offer(item)
                        if client.ended:  # overflowed: it resumes from the database
                            self.remove(client)
                    if item.seq is not None and clients:
                        self._track(item.seq, len(clients), committed, dispatched)
        self.position = max(self.position, upto)

    def _track(self, seq: int, clients: int, committed: float, dispatched: float) -> None:
        pending = self._pending.get(seq)
        if pending is None:
            self._pending[seq] = [clients, committed, dispatched]
            while len(self._pending) > FANOUT_TRACKED:  # clients that left never report
                del self._pending[next(iter(self._pending))]
        else:
            pending[0] += clients

    def sent(self, seq: int) -> None:
        """A client's sender handed message `seq` to its connection."""
        pending = self._pending.get(seq)
        if pending is not None:
            pending[0] -= 1
            if pending[0] <= 0:
                now = time.perf_counter()
                self.commit_to_sent_ms.append((now - pending[1]) * 1000)
                self.fanout_ms.append((now - pending[2]) * 1000)
                del self._pending[seq]

    def close(self) -> None:
        """End every connection (shutdown); clients resume from their cursors later."""
        self.closed = True
        for clients in list(self._by_filter.values()):
            for client in list(clients):
                client.end_for_shutdown()

    def queued_bytes(self) -> int:
        """Bytes waiting in all client queues: bounded by clients × budget."""
        return sum(c.queued_bytes for clients in self._by_filter.values() for c in clients)

    async def wait_empty(self) -> None:
        await self._emptied.wait()
