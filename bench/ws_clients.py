"""WebSocket clients in their own process, for the stream benchmarks.

`latency`: N clients read until stdin closes, then print as JSON on stdout, per `seq`,
every client's arrival time (`time.time()` when the bytes reached the process, before
parsing) of every `metrics` message: the benchmark holds the clocks to subtract (the
push's sending, the writer's commit).
`idle`: N clients connect, print "ready", and hold their connections until stdin closes.

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
from websockets.frames import Frame, Opcode
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


async def wait_stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["latency", "idle"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, required=True)
    args = parser.parse_args()
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
