"""WebSocket clients in their own process, for the stream benchmarks.

`latency`: N clients read until told to stop; for every message carrying a `sent_at`
value, records how long after it was sent each client received it (JSON on stdout).
`idle`: N clients connect, print "ready", and hold their connections until stdin closes.
"""

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect


def sent_at(message: dict[str, Any]) -> float | None:
    for source in message.get("data", {}).values():
        value = source.get("sent_at")
        if isinstance(value, int | float):
            return float(value)
    return None


async def read(ws: ClientConnection, out: dict[int, list[float]]) -> None:
    async for raw in ws:
        now = time.time()
        message = orjson.loads(raw)
        if message.get("type") == "metrics" and (t := sent_at(message)) is not None:
            out.setdefault(message["seq"], []).append(now - t)


async def open_all(url: str, n: int) -> list[ClientConnection]:
    clients: list[ClientConnection] = []
    for start in range(0, n, 100):
        clients += await asyncio.gather(
            *(
                connect(url, max_queue=None, ping_interval=None)
                for _ in range(start, min(n, start + 100))
            )
        )
    for ws in clients:  # the `connected` message
        await ws.recv()
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
    clients = await open_all(args.url, args.clients)
    print("ready", flush=True)
    if args.mode == "idle":
        await wait_stdin_closed()
        return
    received: dict[int, list[float]] = {}
    tasks = [asyncio.create_task(read(ws, received)) for ws in clients]
    await wait_stdin_closed()
    for task in tasks:
        task.cancel()
    print(orjson.dumps({str(k): v for k, v in received.items()}).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
