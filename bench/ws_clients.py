"""WebSocket clients in their own process, for the stream benchmarks.

`latency`: N clients read until told to stop; for every message carrying a `sent_at`
value, records how long after it was sent each client received it, and how long after
the message's own `timestamp` (for a push without `ts`, when the server took the event
in, just before its commit), as JSON on stdout.
`idle`: N clients connect, print "ready", and hold their connections until stdin closes.

Each client is the `websockets` library's sans-I/O protocol driven from an asyncio
protocol: the same handshake and frame parsing as its asyncio client, without a task
switch and a queue per message. A Python process reading 1,000 messages at once was
itself most of the measured latency (the server's and the baseline's alike).
"""

import argparse
import asyncio
import sys
import time
from datetime import datetime
from typing import Any

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

Latencies = dict[str, dict[int, list[float]]]  # by what they count from, per seq


def sent_at(message: dict[str, Any]) -> float | None:
    for source in message.get("data", {}).values():
        value = source.get("sent_at")
        if isinstance(value, int | float):
            return float(value)
    return None


def record(raw: bytes, now: float, out: Latencies) -> None:
    message = orjson.loads(raw)
    if message.get("type") == "metrics" and (t := sent_at(message)) is not None:
        out["sent"].setdefault(message["seq"], []).append(now - t)
        if "timestamp" in message:
            stamped = datetime.fromisoformat(message["timestamp"]).timestamp()
            out["stamped"].setdefault(message["seq"], []).append(now - stamped)


class Client(asyncio.Protocol):
    """One connection; `greeted` resolves with the server's first message (`connected`)."""

    def __init__(self, url: str, out: Latencies) -> None:
        self.ws = ClientProtocol(parse_uri(url), max_size=None)
        self.out = out
        self.greeted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
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
                    record(event.data, now, self.out)
        self._flush()  # pongs, and the close handshake

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.greeted.done():
            self.greeted.set_exception(exc or ConnectionError("closed"))

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)


async def open_all(url: str, n: int, out: Latencies) -> list[Client]:
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
    received: Latencies = {"sent": {}, "stamped": {}}
    clients = await open_all(args.url, args.clients, received)
    print("ready", flush=True)
    await wait_stdin_closed()
    for client in clients:
        if client.transport is not None:
            client.transport.abort()
    if args.mode == "latency":
        out = {name: {str(k): v for k, v in by_seq.items()} for name, by_seq in received.items()}
        print(orjson.dumps(out).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
