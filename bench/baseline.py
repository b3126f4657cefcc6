"""The old service's fan-out, for comparison in the same run: a ConnectionManager that
awaits each client in turn under one lock. Run as its own server process."""

import argparse
import asyncio
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


class ConnectionManager:
    def __init__(self) -> None:
        self.active: list[WebSocket] = []
        self.lock = asyncio.Lock()

    async def broadcast(self, text: str) -> None:
        async with self.lock:
            for ws in list(self.active):
                try:
                    await ws.send_text(text)
                except (WebSocketDisconnect, RuntimeError, OSError):
                    if ws in self.active:
                        self.active.remove(ws)


manager = ConnectionManager()


async def ws_endpoint(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_text('{"type": "connected"}')
    manager.active.append(ws)
    try:
        while True:
            await ws.receive_text()
    except WebSocketDisconnect:
        if ws in manager.active:
            manager.active.remove(ws)


async def broadcast(request: Request) -> JSONResponse:
    text = (await request.body()).decode()
    started = time.perf_counter()
    await manager.broadcast(text)
    return JSONResponse({"seconds": time.perf_counter() - started})


app = Starlette(
    routes=[WebSocketRoute("/ws", ws_endpoint), Route("/broadcast", broadcast, methods=["POST"])]
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
