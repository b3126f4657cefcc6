"""WebSocket clients in their own process, for the stream benchmarks.

`latency`: N clients read until stdin closes, then print as JSON on stdout, per `seq`,
every client's arrival time (`time.time()` when the bytes reached the process, before
parsing) of every `metrics` message: the benchmark holds the clocks to subtract (the
push's sending, the writer's commit).
`idle`: N clients connect, print "ready", and hold their connections until stdin closes.
`resume`: N clients connect at once with `--since` and read until each has the message of
seq `--until`; told to come back (close 1013), they do after the hint. Prints as JSON
when each got there (`time.time()`), how many `metrics` messages each read up to it, and
whether their seqs only ever went up.

Each client is the `websockets` library's sans-I/O protocol driven from an asyncio
protocol on uvloop: the same handshake and frame parsing as its asyncio client, without a
task switch and a queue per message; the JSON is parsed after the run. A Python process
reading 500 messages at once is itself part of the measured latency (the server's and
the baseline's alike), which a browser per user does not add.
"""

import argparse
import asyncio
import sys
import time
from typing import cast

import orjson
import uvloop
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

Arrivals = list[tuple[float, bytes]]  # (time, text frame), in arrival order


def by_seq(arrivals: Arrivals) -> dict[int, list[float]]:
    """Arrival times of the `metrics` messages, per seq."""
    out: dict[int, list[float]] = {}
    for at, raw in arrivals:
        message = orjson.loads(raw)
        if message.get("type") == "metrics":
            out.setdefault(message["seq"], []).append(at)
    return out


class Client(asyncio.Protocol):
    """One connection; `greeted` resolves with the server's first message (`connected`)."""

    def __init__(self, url: str, out: Arrivals) -> None:
        self.ws = ClientProtocol(parse_uri(url), max_size=None)
        self.out = out
        self.greeted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.ws.send_request(self.ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response) and event.status_code != 101:
                self.greeted.set_exception(RuntimeError(f"handshake: {event.status_code}"))
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                assert event.fin, "the server sends whole messages"
                if not self.greeted.done():
                    self.greeted.set_result(None)
                else:
                    self.out.append((now, event.data))
        self._flush()  # pongs, and the close handshake

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.greeted.done():
            self.greeted.set_exception(exc or ConnectionError("closed"))

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)


async def open_all(url: str, n: int, out: Arrivals) -> list[Client]:
    loop = asyncio.get_running_loop()
    host, port = parse_uri(url).host, parse_uri(url).port
    clients: list[Client] = []
    for start in range(0, n, 100):
        batch = [Client(url, out) for _ in range(start, min(n, start + 100))]
        await asyncio.gather(*(loop.create_connection(lambda c=c: c, host, port) for c in batch))
        await asyncio.gather(*(c.greeted for c in batch))
        clients += batch
    return clients


class Resuming(Client):
    """A client catching up: `done` resolves once the message of seq `until` is in."""

    def __init__(self, url: str, until: int, retry: "asyncio.Future[float]") -> None:
        super().__init__(url, [])
        self.until = until
        self.seqs: list[int] = []
        self.retry = retry
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                message = orjson.loads(event.data)
                if message["type"] == "metrics" and not self.done.done():
                    self.seqs.append(message["seq"])
                    if message["seq"] >= self.until:
                        self.done.set_result(now)
            elif isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                close = Close.parse(event.data)
                if close.code == 1013 and not self.retry.done():
                    self.retry.set_result(float(close.reason.rsplit("after ", 1)[1].split()[0]))
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.retry.done() and not self.done.done():
            self.retry.set_exception(exc or ConnectionError("closed before catching up"))


async def resume(url: str, since: str, until: int) -> tuple[float, list[int], int]:
    """One client from cursor `since` until it has seq `until`: when, the seqs it read,
    and how many times it was told to come back."""
    loop = asyncio.get_running_loop()
    host, port = parse_uri(url).host, parse_uri(url).port
    epoch, _, after = since.rpartition(":")
    seqs: list[int] = []
    refused = 0
    while True:
        retry: asyncio.Future[float] = loop.create_future()
        cursor = seqs[-1] if seqs else after
        client = Resuming(f"{url}?since={epoch}:{cursor}", until, retry)
        await loop.create_connection(lambda c=client: c, host, port)
        await asyncio.wait([client.done, retry], return_when=asyncio.FIRST_COMPLETED)
        seqs += client.seqs
        if client.done.done():
            if client.transport is not None:
                client.transport.abort()
            return client.done.result(), seqs, refused
        refused += 1
        await asyncio.sleep(retry.result())


async def wait_stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["latency", "idle", "resume"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--since", help="resume: the cursor")
    parser.add_argument("--until", type=int, help="resume: the seq to read up to")
    args = parser.parse_args()
    if args.mode == "resume":
        done = await asyncio.gather(
            *(resume(args.url, args.since, args.until) for _ in range(args.clients))
        )
        print(orjson.dumps({
            "at": [at for at, _, _ in done],
            "messages": [len([s for s in seqs if s <= args.until]) for _, seqs, _ in done],
            "ordered": all(seqs == sorted(set(seqs)) for _, seqs, _ in done),
            "refused": sum(refused for _, _, refused in done),
        }).decode(), flush=True)  # fmt: skip
        return
    arrivals: Arrivals = []
    clients = await open_all(args.url, args.clients, arrivals)
    print("ready", flush=True)
    await wait_stdin_closed()
    for client in clients:
        if client.transport is not None:
            client.transport.abort()
    if args.mode == "latency":
        out = {str(seq): times for seq, times in by_seq(arrivals).items()}
        print(orjson.dumps(out).decode(), flush=True)


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
