"""The fan-out: clients grouped by filter, each batch encoded once per filter, and the
bytes put on every matching client's bounded queue. Nothing here ever awaits a client."""

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

from schemas.tenants import DEFAULT_TENANT, StreamPolicy
from stream.batches import Batch
from stream.encode import Filter, Outgoing, encode_batches, merge_metrics

DEFAULT_BUDGET_BYTES = 1024 * 1024
DEFAULT_KEEPALIVE_SECONDS = 15.0
FANOUT_TRACKED = 64  # batches whose fan-out is still being timed, at most
PACE_BURST_SECONDS = 5.0  # a paced client may get this many seconds' worth at once


def _unpaced(tenant_id: str) -> StreamPolicy:
    return StreamPolicy(None, 0.0)


def settings_tenant(flt: Filter) -> str:
    """Whose settings govern a stream: its tenant filter's, else the default tenant's."""
    return flt.tenant_id or DEFAULT_TENANT


class Client:
    """One connection's subscription and its queue, bounded by a byte budget.

    Over budget, the queue is dropped and the client ends with `overflowed` set: the
    connection then tells the client where to resume from (its last sent cursor) and
    closes. The client loses nothing: it resumes from the database. Slotted and with a
    waiter made only while waiting, because there is one of these per open connection.

    An idle client (its sender waiting on an empty queue) whose connection offers a
    `direct` write gets a message written at once, without waking its sender: the same
    bytes in the same order, at a fraction of the cost per client in a fan-out. `direct`
    returns False, writing nothing, when the connection cannot take it without waiting;
    the message is then queued as usual.

    Paced (its tenant's `max_events_per_minute`): `metrics` messages are sent at that rate
    on average, from a bucket of a few seconds' worth. While none may go, a new one is
    merged into the newest queued one where it stands (latest values, summed deltas, its
    cursor), so nothing is skipped, only combined, and messages still leave in seq order:
    every cursor sent is the last batch of what the client has then received. Other
    messages are never held back.
    """

    __slots__ = (
        "filter", "start_seq", "sent_seq", "budget", "overflowed", "shutdown", "too_big",
        "refused", "rate", "burst", "direct", "_tokens", "_stamp", "_ended", "_queue",
        "_bytes", "_waiter", "_clock", "transport",
    )  # fmt: skip

    def __init__(
        self,
        flt: Filter,
        start_seq: int,
        budget: int,
        clock: Callable[[], float] = time.monotonic,
        transport: str = "ws",
    ) -> None:
        self.filter = flt
        self.transport = transport  # "ws" or "sse"
        self.start_seq = start_seq  # the hub's position when it joined: live starts after
        self.sent_seq = start_seq
        self.budget = budget
        self.overflowed = False
        self.shutdown = False
        self.too_big = False
        self.refused: str | None = None  # the settings stopped its stream: why
        self.rate = 0.0  # metrics messages per second; 0: unpaced
        self.burst = 1.0
        self.direct: Callable[[str], bool] | None = None
        self._tokens = 1.0
        self._stamp = 0.0
        self._ended = False
        self._queue: deque[Outgoing] = deque()
        self._bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._clock = clock

    def pace(self, per_minute: float) -> None:
        """Send at most `per_minute` metrics messages a minute on average (0: no limit)."""
        self.rate = per_minute / 60
        self.burst = max(1.0, round(self.rate * PACE_BURST_SECONDS))
        self._tokens = min(self._tokens, self.burst) if self._stamp else self.burst
        self._wake()

    def _has_token(self, now: float) -> bool:
        elapsed = now - self._stamp if self._stamp else 0.0
        return min(self.burst, self._tokens + elapsed * self.rate) >= 1

    def _token_wait(self, now: float) -> float:
        """Seconds until a metrics message may go (0: now, and the token is taken)."""
        if self.rate <= 0:
            return 0.0
        if self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate

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

    def offer(self, item: Outgoing) -> bool:
        """Queue a message without waiting, or write it now (True) if the client is idle
        and its connection takes it at once; over budget, end the connection instead."""
        if self._ended:
            return False
        direct = self.direct
        if direct is not None and self._waiter is not None and not self._queue:
            if self._write_now(direct, item):
                return True
        if self.rate > 0 and item.type == "metrics":
            held = self._newest_metrics()  # usually none: the queue is empty
            if held is not None and not self._has_token(self._clock()):
                # The newest waiting one absorbs this one, where it stands in the queue.
                old = self._queue[held]
                merged = Outgoing("metrics", merge_metrics([old.text, item.text]), item.seq)
                grown = len(merged.text) - len(old.text)
                if self._bytes + grown > self.budget:
                    return self._overflow()
                self._queue[held] = merged
                self._bytes += grown
                return False
        size = len(item.text)
        if self._bytes + size > self.budget:
            return self._overflow()
        self._queue.append(item)
        self._bytes += size
        self._wake()
        return False

    def _overflow(self) -> bool:
        self._queue.clear()
        self._bytes = 0
        self.overflowed = True
        self.end()
        return False

    def _write_now(self, direct: Callable[[str], bool], item: Outgoing) -> bool:
        if self.rate > 0 and item.type == "metrics":
            now = self._clock()
            if not self._has_token(now) or not direct(item.text):
                return False
            self._token_wait(now)  # takes the token
        elif not direct(item.text):
            return False
        if item.seq is not None:
            self.sent_seq = item.seq
        return True

    def _newest_metrics(self) -> int | None:
        for i in range(len(self._queue) - 1, -1, -1):
            if self._queue[i].type == "metrics":
                return i
        return None

    def end_for_policy(self, reason: str) -> None:
        """The tenant's settings no longer allow this stream."""
        self.refused = reason
        self.end()

    def end_for_shutdown(self) -> None:
        self.shutdown = True
        self.end()

    def end(self) -> None:
        """End the connection (the peer left, or it must close); idempotent."""
        self._ended = True
        self._wake()

    async def next(self) -> Outgoing | None:
        """The next message to send, or None once the connection is to end."""
        while True:
            if self._ended:
                return None
            item = self.poll()
            if isinstance(item, Outgoing):
                return item
            await self._sleep(item)

    def poll(self) -> Outgoing | float | None:
        """The next message if one may go now; else the seconds until one may (paced),
        or None when the queue is empty."""
        if not self._queue:
            return None
        index = 0
        if self.rate > 0 and self._queue[0].type == "metrics":
            wait = self._token_wait(self._clock())
            if wait > 0:
                others = [i for i, q in enumerate(self._queue) if q.type != "metrics"]
                if not others:
                    return wait
                index = others[0]  # not held back behind a paced metrics message
        item = self._queue[index]
        del self._queue[index]
        self._bytes -= len(item.text)
        return item

    async def _sleep(self, seconds: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = loop.call_later(seconds, self._wake) if seconds is not None else None
        try:
            await self._waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


class StreamLimits(NamedTuple):
    """Open streams in all and per tenant, and new ones per second (a bucket of 1 s)."""

    total: int = 10_000
    per_tenant: int = 5_000
    per_second: float = 500.0


class Hub:
    """Who watches what, and the position up to which batches have been handed out."""

    def __init__(
        self,
        epoch: str,
        position: int,
        budget: int = DEFAULT_BUDGET_BYTES,
        keepalive_seconds: float = DEFAULT_KEEPALIVE_SECONDS,
        policy: Callable[[str], StreamPolicy] = _unpaced,
        limits: StreamLimits | None = None,
        observe_delivery: Callable[[float, float], None] | None = None,
    ) -> None:
        self.epoch = epoch
        # Each batch's commit-to-sent and fan-out seconds, once every client has it (`/metrics`).
        self._observe_delivery = observe_delivery
        self.transports: Counter[str] = Counter()  # open streams by transport
        self.overflows = 0  # clients ended for falling too far behind, since start
        self.policy = policy  # the stream side of a tenant's settings
        self.limits = limits or StreamLimits()
        self._per_tenant: Counter[str] = Counter()
        self._count = 0
        self._new_tokens = self.limits.per_second
        self._new_stamp = time.monotonic()
        self.position = position
        self.budget = budget
        self.keepalive_seconds = keepalive_seconds  # SSE comment lines while idle
        self._by_filter: dict[Filter, set[Client]] = {}
        self._emptied = asyncio.Event()
        self._emptied.set()
        self.closed = False
        # Until the last matching client's send returned: from dispatch (the fan-out
        # itself), and from the writer's commit (the server's part of commit-to-receive).
        self.fanout_ms: deque[float] = deque(maxlen=100)
        self.commit_to_sent_ms: deque[float] = deque(maxlen=100)
        self._pending: dict[int, list[float]] = {}

    def __len__(self) -> int:
        return self._count

    def admit(self, tenant_id: str) -> tuple[str, int] | None:
        """None if one more stream of the tenant may open now; else why not, and after
        how many seconds to try again."""
        now = time.monotonic()
        rate = self.limits.per_second
        self._new_tokens = min(rate, self._new_tokens + (now - self._new_stamp) * rate)
        self._new_stamp = now
        if self._count >= self.limits.total:
            return f"too many open streams (limit {self.limits.total}); retry later", 10
        if self._per_tenant[tenant_id] >= self.limits.per_tenant:
            limit = self.limits.per_tenant
            return f"too many open streams for tenant {tenant_id!r} (limit {limit})", 10
        if self._new_tokens < 1:
            return f"too many new streams (limit {rate:g} a second); retry shortly", 1
        self._new_tokens -= 1
        return None

    def add(self, flt: Filter, transport: str = "ws") -> Client:
        """Join a client (ended at once, with the reason, if its settings refuse it)."""
        client = Client(flt, self.position, self.budget, transport=transport)
        if self.closed:
            client.end_for_shutdown()
        self._apply(client)
        self._join(client)
        return client

    def _join(self, client: Client) -> None:
        self._by_filter.setdefault(client.filter, set()).add(client)
        self._per_tenant[settings_tenant(client.filter)] += 1
        self.transports[client.transport] += 1
        self._count += 1
        self._emptied.clear()

    def _apply(self, client: Client) -> None:
        policy = self.policy(settings_tenant(client.filter))
        if policy.refusal is not None:
            client.end_for_policy(policy.refusal)
        else:
            client.pace(policy.per_minute)

    def settings_changed(self, tenant_id: str) -> None:
        """A tenant's settings changed: its streams end (if refused now) or re-pace."""
        for clients in list(self._by_filter.values()):
            for client in list(clients):
                if settings_tenant(client.filter) == tenant_id:
                    self._apply(client)
                    if client.ended:
                        self.remove(client)

    def remove(self, client: Client) -> None:
        clients = self._by_filter.get(client.filter)
        if clients is not None and client in clients:
            clients.discard(client)
            self._per_tenant[settings_tenant(client.filter)] -= 1
            self.transports[client.transport] -= 1
            self._count -= 1
            self.overflows += client.overflowed
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
        self._apply(client)
        if client.ended:
            return
        self._join(client)

    def dispatch(
        self, batches: Sequence[Batch], upto: int, committed_at: float | None = None
    ) -> None:
        """Hand out batches (in seq order) up to `upto`: one encoding per distinct filter.
        `committed_at` (perf_counter) is when the writer committed the first of them."""
        dispatched = time.perf_counter()
        committed = committed_at if committed_at is not None else dispatched
        tracked = set()
        encoded = {flt: encode_batches(batches, flt, self.epoch) for flt in self._by_filter}
        for i in range(len(batches)):
            for flt, clients in list(self._by_filter.items()):
                for item in encoded[flt][i]:
                    queued = 0
                    for client in list(clients):
                        if client.offer(item):
                            continue  # written already
                        if client.ended:  # overflowed: it resumes from the database
                            self.remove(client)
                        else:
                            queued += 1
                    if item.seq is not None and clients:
                        self._track(item.seq, queued, committed, dispatched)
                        tracked.add(item.seq)
        self.position = max(self.position, upto)
        for seq in tracked:  # every client had it written at once
            if seq in self._pending and self._pending[seq][0] <= 0:
                self._done(seq)

    def _track(self, seq: int, clients: int, committed: float, dispatched: float) -> None:
        pending = self._pending.get(seq)
        if pending is None:
            self._pending[seq] = [clients, committed, dispatched]
            while len(self._pending) > FANOUT_TRACKED:  # clients that left never report
                del self._pending[next(iter(self._pending))]
        else:
            pending[0] += clients

    def _done(self, seq: int) -> None:
        pending = self._pending.pop(seq)
        now = time.perf_counter()
        self.commit_to_sent_ms.append((now - pending[1]) * 1000)
        self.fanout_ms.append((now - pending[2]) * 1000)
        if self._observe_delivery is not None:
            self._observe_delivery(now - pending[1], now - pending[2])

    def sent(self, seq: int) -> None:
        """A client's sender handed message `seq` to its connection."""
        pending = self._pending.get(seq)
        if pending is not None:
            pending[0] -= 1
            if pending[0] <= 0:
                self._done(seq)

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
