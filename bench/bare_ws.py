"""Reference for memory per connection: a bare `websockets` server holding idle clients."""

import argparse
import asyncio

from websockets.asyncio.server import ServerConnection, serve


async def handler(ws: ServerConnection) -> None:
    await ws.send('{"type": "connected"}')
    await ws.wait_closed()


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, ping_interval=None, compression=None):
        await asyncio.Future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
