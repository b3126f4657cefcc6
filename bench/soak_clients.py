"""Resuming stream clients for the soak, in a process of their own.

`python -m bench.soak_clients --base URL --ws N --sse M --seed S`: each client reads
for 5-60 s (one in ten stops reading for 30 s meanwhile), disconnects, and resumes with
its cursor a moment later, until stdin closes. Then prints as JSON, per client, the
cursor it started from and each `metrics` message's seq and `coalesced`, in order.
"""

import argparse
import asyncio
import random
import sys

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

STALL_SECONDS = 30.0


class Reader:
    def __init__(self, base: str, rng: random.Random) -> None:
        self.base = base
        self.rng = rng
        self.start: int | None = None
        self.seqs: list[int] = []
        self.merged: list[int] = []
        self.cursor: str | None = None
        self.reconnects = 0

    def take(self, message: dict[str, object]) -> None:
        if message["type"] == "connected" and self.start is None:
            self.cursor = str(message["cursor"])
            self.start = int(self.cursor.rsplit(":", 1)[1])
        elif message["type"] == "metrics":
            self.seqs.append(int(message["seq"]))  # type: ignore[call-overload]
            self.merged.append(int(message.get("coalesced", 1)))  # type: ignore[call-overload]
            self.cursor = str(message["cursor"])

    def session_seconds(self) -> tuple[float, bool]:
        return self.rng.uniform(5, 60), self.rng.random() < 0.1

    async def ws(self, stop: asyncio.Event) -> None:
        url = self.base.replace("http://", "ws://") + "/ws/metrics"
        while not stop.is_set():
            seconds, stall = self.session_seconds()
            query = f"?since={self.cursor}" if self.cursor else ""
            try:
                async with connect(url + query, max_size=None, compression=None) as ws:
                    deadline = asyncio.get_running_loop().time() + seconds
                    while not stop.is_set():
                        left = deadline - asyncio.get_running_loop().time()
                        if left <= 0:
                            break
                        if stall and left < seconds / 2:
                            stall = False
                            await asyncio.sleep(STALL_SECONDS)  # stops reading a while
                        try:
                            self.take(orjson.loads(await asyncio.wait_for(ws.recv(), left)))
                        except TimeoutError:
                            break
            except (ConnectionClosed, OSError):
                pass  # told to go (slow, or come back later): resume from the cursor
            self.reconnects += 1
            await asyncio.sleep(self.rng.uniform(0.1, 2.0))

    async def sse(self, stop: asyncio.Event, http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            seconds, stall = self.session_seconds()
            params = {"since": self.cursor} if self.cursor else {}
            try:
                async with asyncio.timeout(seconds + STALL_SECONDS):
                    await self._sse_once(http, params, seconds, stall, stop)
            except (TimeoutError, httpx.HTTPError):
                pass
            self.reconnects += 1
            await asyncio.sleep(self.rng.uniform(0.1, 2.0))

    async def _sse_once(
        self,
        http: httpx.AsyncClient,
        params: dict[str, str],
        seconds: float,
        stall: bool,
        stop: asyncio.Event,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        async with http.stream("GET", "/stream/metrics", params=params) as response:
            if response.status_code != 200:
                await asyncio.sleep(float(response.headers.get("retry-after", 1)))
                return
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event in ("metrics", "connected"):
                    self.take(orjson.loads(line[6:]))
                elif line == "":
                    if stop.is_set() or loop.time() > deadline:
                        return
                    if stall and loop.time() > deadline - seconds / 2:
                        stall = False
                        await asyncio.sleep(STALL_SECONDS)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--ws", type=int, required=True)
    parser.add_argument("--sse", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    stop = asyncio.Event()
    readers = [Reader(args.base, random.Random(rng.random())) for _ in range(args.ws + args.sse)]
    limits = httpx.Limits(max_connections=args.sse + 5)
    async with httpx.AsyncClient(base_url=args.base, timeout=90, limits=limits) as http:
        tasks = [asyncio.create_task(r.ws(stop)) for r in readers[: args.ws]]
        tasks += [asyncio.create_task(r.sse(stop, http)) for r in readers[args.ws :]]
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        stop.set()
        await asyncio.wait(tasks, timeout=STALL_SECONDS + 30)
    print(orjson.dumps([{"start": r.start, "seqs": r.seqs, "merged": r.merged,
                         "reconnects": r.reconnects} for r in readers]).decode(),
          flush=True)  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
