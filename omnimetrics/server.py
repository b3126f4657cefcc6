"""The uvicorn server as omnimetrics runs it, for the CLI and the tests alike."""

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from stream.routes import MAX_MESSAGE_BYTES


class Server(uvicorn.Server):
    """Drains the app's streams (WS 1001, SSE end) before uvicorn closes connections:
    uvicorn would otherwise close WebSockets with 1012 and wait on open SSE responses."""

    def __init__(self, config: uvicorn.Config, *, signals: bool = True) -> None:
        super().__init__(config)
        self._signals = signals

    async def shutdown(self, sockets: Any = None) -> None:
        app = self.config.app
        drain: Callable[[], Awaitable[None]] | None = getattr(
            getattr(app, "state", None), "drain", None
        )
        if drain is not None:
            await drain()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if self._signals:
            with super().capture_signals():
                yield
        else:
            yield


def build_server(
    app: FastAPI, host: str, port: int, log_level: str = "info", *, signals: bool = True
) -> Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        ws_max_size=MAX_MESSAGE_BYTES,  # larger frames are closed with 1009
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=10,
    )
    return Server(config, signals=signals)
