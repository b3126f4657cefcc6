"""The Redis Stream backend's writing side: every committed batch, with its rows' deltas,
appended once to `<prefix>:batches` as entry `<seq>-0` (stream/wire.py), trimmed
approximately to `maxlen` entries; each series' strings once in the hash
`<prefix>:series` (id -> strings), written before the first entry that holds it.

Publishing never blocks or fails a commit: the tail hands over what it read and goes on;
anything the publisher has not got (it was disconnected, it fell behind, the process
restarted, Redis lost its data) is read again from the store, from the stream's top. Each
append is a script that writes only onto the entry this process last saw on top, so a
Redis that restarted empty (or from an older snapshot) is noticed at the next append
whatever the client library did to the connection, and publishing twice stores once. The
stream's database epoch is kept in `<prefix>:epoch`: a stream of another database is
dropped.

For gateways the writer also keeps, beside the stream, every tenant's settings (the hash
`<prefix>:tenants`, tenant -> JSON, with `<prefix>:tenants:version`, a value never written
twice, set on each change) and a heartbeat (`<prefix>:writer`: its head seq, expiring after
HEARTBEAT_TTL seconds), written every HEARTBEAT_SECONDS and at once on a settings change.
Each heartbeat also looks for the epoch key: a Redis that lost its data while no batch came
is noticed within a heartbeat, and everything above written again. A gateway reads them
through `WriterWatch`.
"""

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, Protocol

import duckdb
import httpx
import msgspec
import numpy as np
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from schemas.db import Database
from schemas.outcomes import Outcome, describe
from schemas.tenants import TenantRegistry, TenantSettings
from stream.batches import MAX_SERIES, Batch, Series, known_series
from stream.history import read_batches_after
from stream.sources import CatchUpFailed, Fill
from stream.wire import (
    batch_series,
    batches_of_rows,
    decode_page,
    decode_series,
    encode_batch,
    series_bytes,
)

log = logging.getLogger("omnimetrics.stream")

MAX_QUEUED_ROWS = 200_000  # handed over by the tail; past this, read again from the store
PAGE_BATCHES = 1_000  # batches a store read gives at most
RETRY_SECONDS = (0.2, 5.0)  # first and longest wait between attempts to reach Redis
TIMEOUT_SECONDS = 5.0
READ_COUNT = 500  # entries a gateway reads at once
BLOCK_SECONDS = 1.0  # how long a read waits for new entries
HEARTBEAT_SECONDS = 1.0
HEARTBEAT_TTL = 5  # seconds without a heartbeat after which gateways say the writer is gone
WATCH_SECONDS = 0.25  # how often a gateway looks at the heartbeat and the settings' version


class Keys:
    """The Redis keys of one prefix."""

    def __init__(self, prefix: str) -> None:
        self.batches, self.series, self.epoch = (
            f"{prefix}:batches", f"{prefix}:series", f"{prefix}:epoch")  # fmt: skip
        self.tenants, self.tenants_version = f"{prefix}:tenants", f"{prefix}:tenants:version"
        self.writer = f"{prefix}:writer"


class Chunk(NamedTuple):
    """Batches the tail read: every batch in seq (after, upto]."""

    after: int
    upto: int
    batches: list[Batch]

    @property
    def rows(self) -> int:
        return sum(b.hi - b.lo for b in self.batches)


class RedisPublisher:
    def __init__(
        self,
        url: str,
        db: Database,
        epoch: str,
        head: int,
        prefix: str = "omnimetrics",
        maxlen: int = 100_000,
        outcome: Outcome | None = None,
        tenants: TenantRegistry | None = None,
    ) -> None:
        self.keys = Keys(prefix)
        self.stream, self.series_key, self.epoch_key = (
            self.keys.batches, self.keys.series, self.keys.epoch)  # fmt: skip
        self._tenants = tenants or TenantRegistry()
        self._tenants_changed = True  # written on each connection: Redis may have lost them
        self._token, self._settings_written = secrets.token_hex(8), 0  # the settings' version
        self._beat_at = 0.0
        self._url = url
        self._db = db
        self._epoch = epoch
        self._maxlen = maxlen
        self.outcome = outcome or Outcome("publishing to Redis")
        self._chunks: deque[Chunk] = deque()
        self._queued_rows = 0
        self._head = head  # the last seq committed, as the tail heard
        self._wake = asyncio.Event()
        self._known: set[int] = set()  # series in this Redis's hash
        self.published = 0  # the stream's top, as far as this process knows
        self.connected = False
        self.entries = 0  # appended, since start
        self._top = ""  # the stream's last entry id as this process last saw it ("": none)

    def offer(self, chunk: Chunk) -> None:
        """The tail's hand-over (never waits): kept while little is queued."""
        self._head = max(self._head, chunk.upto)
        if self._queued_rows + chunk.rows <= MAX_QUEUED_ROWS:
            self._chunks.append(chunk)
            self._queued_rows += chunk.rows
        self._wake.set()

    @property
    def behind(self) -> int:
        """Seqs committed and not yet in the stream."""
        return max(0, self._head - self.published)

    def report(self) -> dict[str, Any]:
        return {"connected": self.connected, "published_seq": self.published,
                "head_seq": self._head, "entries": self.entries,
                **self.outcome.report()}  # fmt: skip

    async def run(self) -> None:
        """Publish until cancelled; Redis going away is waited out, never fatal."""
        unsubscribe = self._tenants.subscribe(self._settings_changed)
        try:
            await _connected(self._url, TIMEOUT_SECONDS, self._start, self._publish, self)
        finally:
            unsubscribe()

    def _settings_changed(self, tenant_id: str, settings: TenantSettings) -> None:
        self._tenants_changed = True
        self._wake.set()

    async def _start(self, client: aioredis.Redis) -> None:
        """Where the stream stands: its top, or (empty, or of another database) the store's
        last `maxlen` batches to publish."""
        self._known.clear()  # what this Redis holds is read anew
        self._tenants_changed, self._beat_at = True, 0.0
        epoch = _text(await client.get(self.epoch_key))
        if epoch and epoch != self._epoch:
            log.warning("redis stream %s holds another database's batches: replaced", self.stream)
            await client.delete(self.stream, self.series_key, self.keys.tenants)
        await client.set(self.epoch_key, self._epoch)
        top = await client.xrevrange(self.stream, count=1)
        self._top = _text(top[0][0]) if top else ""
        floor = await self._db.read(partial(_floor, head=self._head, batches=self._maxlen))
        self.published = max(floor, entry_seq(self._top) if top else 0)

    async def _publish(self, client: aioredis.Redis) -> None:
        while True:
            while self.published < self._head:
                batches, end = await self._next()
                await self._append(client, batches)
                self.published = end
                self.outcome.succeeded()
                await self._beat(client)
            await self._beat(client)
            self._wake.clear()
            if self.published >= self._head:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEARTBEAT_SECONDS):
                        await self._wake.wait()

    async def _beat(self, client: aioredis.Redis) -> None:
        """The heartbeat when it is due, and the tenants' settings when they changed."""
        now = time.monotonic()
        if not self._tenants_changed and now - self._beat_at < HEARTBEAT_SECONDS:
            return
        async with client.pipeline(transaction=False) as pipe:
            pipe.exists(self.epoch_key)
            pipe.set(self.keys.writer, self._head, ex=HEARTBEAT_TTL)
            if self._tenants_changed:
                self._tenants_changed = False
                settings = {t: s.model_dump_json() for t, s in self._tenants.all().items()}
                if settings:
                    pipe.hset(self.keys.tenants, mapping=settings)  # type: ignore[arg-type]
                # Never the same value twice (a counter would start again at 1 in a Redis
                # that restarted, and a gateway that last read 1 would miss the change).
                self._settings_written += 1
                pipe.set(self.keys.tenants_version, f"{self._token}:{self._settings_written}")
            epoch_kept, *_ = await pipe.execute()
        if not epoch_kept:  # Redis lost its data (a client library may reconnect unseen)
            raise Moved(f"{self.epoch_key} is gone: Redis restarted empty")
        self._beat_at = now

    async def _next(self) -> tuple[list[Batch], int]:
        """The batches right after the stream's top: the tail's, or read from the store."""
        while self._chunks and self._chunks[0].upto <= self.published:
            self._drop()
        if self._chunks and self._chunks[0].after == self.published:
            chunk = self._drop()
            return chunk.batches, chunk.upto
        known = known_series(self._epoch)
        read = partial(read_batches_after, after=self.published, head=self._head, known=known,
                       limit=PAGE_BATCHES)  # fmt: skip
        page = await self._db.read(read)
        return page.batches, page.end

    def _drop(self) -> Chunk:
        chunk = self._chunks.popleft()
        self._queued_rows -= chunk.rows
        return chunk

    async def _append(self, client: aioredis.Redis, batches: list[Batch]) -> None:
        """One round trip: the series Redis lacks, then each batch, written only if the
        stream's top is still the entry this process last saw there (else `Moved`); an id
        Redis has had before is refused, which is the point."""
        if not batches:
            return
        fresh: dict[int, bytes] = {}
        for batch in batches:
            for i in batch_series(batch):
                if i not in self._known and i not in fresh:
                    fresh[i] = series_bytes(batch.block.series[i])
        args: list[bytes | str | int] = [self._top, self._maxlen, len(fresh)]
        for i, value in fresh.items():
            args += [i, value]
        for batch in batches:
            args += [f"{batch.last_seq}-0", encode_batch(batch)]
        outcome, *rest = await client.eval(_APPEND, 2, self.stream, self.series_key, *args)
        if _text(outcome) == "moved":
            raise Moved(f"{self.stream}'s top is {_text(rest[0]) or 'gone'}, not {self._top}")
        added, top = rest
        self._top = _text(top)
        self._known.update(fresh)
        self.entries += int(added)


class Moved(RedisError):
    """The stream is not as this process left it (Redis restarted empty, or from an older
    snapshot): where it stands is read anew, and what it lacks published from the store."""


# Appends batches only onto the entry the publisher last saw on top (KEYS[1], the stream;
# KEYS[2], the series hash). A check before a pipeline would not do: a client library may
# reconnect behind the caller's back (redis-py 8.2 does, to an idle connection the server
# closed), and a Redis that restarted empty would then take the new batches as if the
# earlier ones were there. ARGV: the top expected ('' for none), maxlen, the number of
# series, (id, strings) per series, then (entry id, batch) per batch. Returns
# {'moved', the top found} or {'ok', entries added, the top now}; an id not above every
# id the stream has had is refused by XADD and skipped (published before).
_APPEND = """
local function top()
  local entry = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  return entry and entry[1] or ''
end
local found = top()
if found ~= ARGV[1] then return {'moved', found} end
local series = tonumber(ARGV[3])
for i = 4, 3 + 2 * series, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
local added = 0
for i = 4 + 2 * series, #ARGV, 2 do
  local reply = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], ARGV[i], 'b', ARGV[i + 1])
  if type(reply) == 'table' and reply.err then
    if not string.find(reply.err, 'equal or smaller', 1, true) then return reply end
  else
    added = added + 1
  end
end
return {'ok', added, top()}
"""


_FLOOR = """
SELECT min(first) - 1 FROM (
  SELECT min(seq) AS first FROM points WHERE seq <= $head
  GROUP BY batch ORDER BY batch DESC LIMIT $batches)
"""


def _floor(cur: duckdb.DuckDBPyConnection, head: int, batches: int) -> int:
    """The seq after which the store's last `batches` batches up to `head` lie."""
    (found,) = cur.execute(_FLOOR, {"head": head, "batches": batches}).fetchall()[0]
    return int(found) if found is not None else head


def entry_seq(entry_id: bytes | str | None) -> int:
    """The seq of an entry id (`<seq>-0`)."""
    return int(_text(entry_id).partition("-")[0])


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else value or ""


Deliver = Callable[[list[Batch], int], None]  # batches, and the seq they reach


class RedisReader:
    """A gateway's tail: the stream's entries after `position`, each decoded once and handed
    on in seq order (`deliver`: a hub's dispatch). Series strings come from the hash, each
    read once. An entry that does not follow the position (the stream was trimmed past it,
    or Redis lost it and the writer republished only its last batches) comes after the
    batches between, from `fill` (the writer's `/api/v1/batches`): no gap, no duplicate."""

    def __init__(
        self,
        url: str,
        position: int,
        deliver: Deliver,
        fill: Fill,
        prefix: str = "omnimetrics",
        max_series: int = MAX_SERIES,
    ) -> None:
        self.stream, self.series_key = f"{prefix}:batches", f"{prefix}:series"
        self._url = url
        self.position = position
        self._deliver = deliver
        self._fill = fill
        self._series: dict[int, Series] = {}
        self._max_series = max_series
        self.connected = False
        self.filled = 0  # batches taken from the writer, since start
        self.outcome = Outcome("reading the Redis stream")

    async def run(self) -> None:
        """Read until cancelled; Redis or the writer going away is waited out."""
        await _connected(self._url, TIMEOUT_SECONDS + BLOCK_SECONDS, _ping, self._read, self)

    async def _read(self, client: aioredis.Redis) -> None:
        while True:
            after: dict[Any, Any] = {self.stream: f"{self.position}-0"}
            block = int(BLOCK_SECONDS * 1000)
            found: Any = await client.xread(after, count=READ_COUNT, block=block)
            for _, entries in found or ():
                for entry_id, fields in entries:
                    if entry_seq(entry_id) <= self.position:
                        continue
                    batch = await self._decoded(client, fields[b"b"])
                    if int(batch.block.seq[batch.lo]) > self.position + 1:
                        await self._fill_to(int(batch.block.seq[batch.lo]) - 1)
                    if batch.last_seq > self.position:
                        self._deliver([batch], batch.last_seq)
                        self.position = batch.last_seq

    async def _fill_to(self, upto: int) -> None:
        """The batches after the position up to (at least) `upto`, from the writer."""
        while self.position < upto:
            batches, end, more = await self._fill(self.position)
            if end <= self.position:
                return  # the writer has nothing there (seqs a failed write never used)
            self.filled += len(batches)
            self._deliver(batches, end)
            self.position = end
            if not more:
                return

    async def _decoded(self, client: aioredis.Redis, data: bytes) -> Batch:
        rows: dict[str, Any] = msgspec.msgpack.decode(data)
        ids = [int(i) for i in np.unique(np.frombuffer(rows["series_id"], "<i8"))]
        missing = [i for i in ids if i not in self._series]
        if missing:
            if len(self._series) + len(missing) > self._max_series:
                self._series = {}  # a new map (blocks handed out keep theirs)
                missing = ids
            found: list[bytes | None] = await client.hmget(  # type: ignore[assignment]
                self.series_key, [str(i) for i in missing]
            )
            for i, value in zip(missing, found, strict=True):
                if value is None:
                    raise FillFailed(f"series {i} is not in {self.series_key}")
                self._series[i] = decode_series(value)  # only added to: blocks share it
        (batch,) = batches_of_rows(rows, self._series)
        return batch


class _Link(Protocol):
    connected: bool
    outcome: Outcome


Work = Callable[[aioredis.Redis], Awaitable[None]]


async def _connected(url: str, read_seconds: float, start: Work, work: Work, link: _Link) -> None:
    """`start` then `work` on one connection to Redis, and again on a new one whenever
    Redis fails (waiting longer each time, up to RETRY_SECONDS[1]), until cancelled. One
    connection, never reconnected behind the caller's back: a Redis that restarted empty
    must be noticed (its stream and series read anew), not written into as before."""
    wait = RETRY_SECONDS[0]
    while True:
        client = aioredis.Redis.from_url(
            url, socket_timeout=read_seconds, socket_connect_timeout=TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0), single_connection_client=True)  # fmt: skip
        try:
            await start(client)
            link.connected, wait = True, RETRY_SECONDS[0]
            link.outcome.succeeded()
            await work(client)
        except (RedisError, OSError, FillFailed) as exc:
            link.connected = False
            link.outcome.failed(exc)
        finally:
            await client.aclose()
        await asyncio.sleep(wait)
        wait = min(wait * 2, RETRY_SECONDS[1])


async def _ping(client: aioredis.Redis) -> None:
    await client.ping()


class FillFailed(CatchUpFailed):
    """What a gateway needs is not there (the writer did not answer, a series is unknown)."""


def writer_fill(http: httpx.AsyncClient, epoch: str, limit: int = PAGE_BATCHES) -> Fill:
    """`RedisReader`'s fill from the writer: `/api/v1/batches` in MessagePack, on `http`
    (an `httpx.AsyncClient` on the writer's URL, with its credential if auth is on)."""

    async def fill(after: int) -> tuple[list[Batch], int, bool]:
        params: dict[str, str | int] = {"since": f"{epoch}:{after}", "limit": limit}
        try:
            response = await http.get("/api/v1/batches", params=params,
                                      headers={"Accept": "application/msgpack"})  # fmt: skip
        except httpx.HTTPError as exc:
            raise FillFailed(f"the writer did not answer: {describe(exc)}") from exc
        if response.status_code != 200:
            raise FillFailed(f"the writer answered {response.status_code}: {response.text[:200]}")
        batches, cursor, more = decode_page(response.content)
        return batches, int(cursor.rpartition(":")[2]), more

    return fill


class WriterWatch:
    """A gateway's view of the writer through Redis: its heartbeat, its database's epoch,
    and every tenant's settings, put in force in `tenants` within WATCH_SECONDS of a
    change. While the settings' version key is missing (Redis restarted, the writer has
    not written them again yet) the settings in force stay."""

    def __init__(self, url: str, epoch: str, tenants: TenantRegistry, prefix: str) -> None:
        self.keys = Keys(prefix)
        self._url = url
        self.epoch = epoch  # the database this gateway serves
        self.tenants = tenants
        self.connected = False
        self.outcome = Outcome("watching the writer through Redis")
        self.heard: float | None = None  # monotonic time of the last heartbeat seen
        self.writer_head = 0
        self.writer_epoch = epoch
        self._version: bytes | str | None = None

    async def run(self) -> None:
        await _connected(self._url, TIMEOUT_SECONDS, self._start, self._watch, self)

    async def _start(self, client: aioredis.Redis) -> None:
        self._version = None  # read the settings anew on each connection

    async def _watch(self, client: aioredis.Redis) -> None:
        while True:
            await self.look(client)
            await asyncio.sleep(WATCH_SECONDS)

    async def look(self, client: aioredis.Redis) -> None:
        """Read the heartbeat and epoch once, and the settings if their version moved."""
        version, epoch, head = await client.mget(
            self.keys.tenants_version, self.keys.epoch, self.keys.writer
        )
        if head is not None:
            self.heard, self.writer_head = time.monotonic(), int(head)
        if epoch is not None:
            self.writer_epoch = _text(epoch)
        if version is not None and version != self._version:
            self._apply(await _tenant_docs(client, self.keys))
            self._version = version

    def _apply(self, docs: dict[str, bytes]) -> None:
        found = _settings_of(docs)
        for tenant_id, settings in found.items():
            if self.tenants.get(tenant_id) != settings:
                self.tenants.set(tenant_id, settings)
        for tenant_id in self.tenants.all().keys() - docs.keys():  # reset on the writer
            if self.tenants.get(tenant_id) != TenantSettings():
                self.tenants.set(tenant_id, TenantSettings())

    @property
    def writer_heard(self) -> bool:
        return self.heard is not None and time.monotonic() - self.heard < HEARTBEAT_TTL

    def reasons(self) -> list[str]:
        """What is wrong with the writer as seen from here, for `/health`."""
        if not self.connected:
            return []  # the Redis connection's own reason says it
        if self.writer_epoch != self.epoch:
            return [f"the writer now serves another database (epoch {self.writer_epoch}; this "
                    f"gateway serves {self.epoch}): restart the gateway"]  # fmt: skip
        if not self.writer_heard:
            return [f"the writer has not been heard from for over {HEARTBEAT_TTL} s; clients "
                    "stay connected and get its batches when it returns"]  # fmt: skip
        return []


async def _tenant_docs(client: aioredis.Redis, keys: Keys) -> dict[str, bytes]:
    docs: dict[bytes | str, bytes | str] = await client.hgetall(keys.tenants)
    return {_text(k): v if isinstance(v, bytes) else v.encode() for k, v in docs.items()}


def _settings_of(docs: dict[str, bytes]) -> dict[str, TenantSettings]:
    """The settings in `docs` (tenant -> JSON); one that does not validate is left out."""
    found = {}
    for tenant_id, doc in docs.items():
        try:
            found[tenant_id] = TenantSettings.model_validate_json(doc)
        except ValueError as exc:
            log.error("tenant %s's settings in Redis are invalid: %s", tenant_id, exc)
    return found


@dataclass
class GatewayStart:
    epoch: str
    position: int  # where the gateway's stream starts
    tenants: dict[str, TenantSettings]


async def gateway_start(url: str, prefix: str, wait_seconds: float) -> GatewayStart:
    """What a gateway starts from, read from Redis: the writer's database epoch, the
    stream's top (or, while the stream is empty, the writer's head from its heartbeat),
    and the tenants' settings. Waits up to `wait_seconds` for a writer that has published;
    raises CatchUpFailed when none did."""
    keys = Keys(prefix)
    deadline = time.monotonic() + wait_seconds
    why = "no writer has published there yet"
    while True:
        client = aioredis.Redis.from_url(url, socket_timeout=TIMEOUT_SECONDS,
                                         socket_connect_timeout=TIMEOUT_SECONDS)  # fmt: skip
        try:
            epoch, head = await client.mget(keys.epoch, keys.writer)
            top = await client.xrevrange(keys.batches, count=1)
            if epoch is not None and (top or head is not None):
                tenants = _settings_of(await _tenant_docs(client, keys))
                position = entry_seq(top[0][0]) if top else int(_text(head))
                return GatewayStart(_text(epoch), position, tenants)
        except (RedisError, OSError) as exc:
            why = f"cannot reach it: {describe(exc)}"
        finally:
            await client.aclose()
        if time.monotonic() >= deadline:
            raise CatchUpFailed(f"redis {url} (prefix {prefix!r}): {why}")
        await asyncio.sleep(0.2)
