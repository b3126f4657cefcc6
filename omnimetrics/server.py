"""The uvicorn server as omnimetrics runs it, for the CLI and the tests alike."""

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import uvicorn

from omnimetrics.accept import BatchAccept
from omnimetrics.app import App
from omnimetrics.upgrades import TurnTakingHttpProtocol
from omnimetrics.ws_protocol import FanoutWSProtocol
from stream.ws import MAX_MESSAGE_BYTES


class Server(uvicorn.Server):
    """Drains the app's streams (WS 1001, SSE end) before uvicorn closes connections:
    uvicorn would otherwise close WebSockets with 1012 and wait on open SSE responses.
    Accepts every waiting connection each round of the loop (omnimetrics/accept.py)."""

    def __init__(
        self, config: uvicorn.Config, *, signals: bool = True, send_buffer: int | None = None
    ) -> None:
        self._listening = False
        self._uvicorn_started = False
        super().__init__(config)
        self._signals = signals
        self._send_buffer = send_buffer

    # uvicorn says it has started at the end of its startup; here that is before our
    # listeners exist, so `started` waits for them too (other threads watch it).
    @property
    def started(self) -> bool:
        return self._uvicorn_started and self._listening

    @started.setter
    def started(self, value: bool) -> None:
        self._uvicorn_started = value

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None:
            sock = self.config.bind_socket()
            if self._send_buffer:
                # Accepted connections inherit the listener's send buffer. Capped, a
                # client that stops reading pins at most this much kernel memory, and
                # backpressure reaches its bounded queue instead of the kernel's
                # multi-megabyte autotuning.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
            sockets = [sock]
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's startup (the lifespan first), then the sockets served by
        `BatchAccept` rather than the loop's server (omnimetrics/accept.py)."""
        if not sockets:
            self._listening = True  # uvicorn's own listeners
            await super().startup(sockets)
            return
        await super().startup([])
        config = self.config

        def factory() -> asyncio.Protocol:  # as uvicorn makes its protocols
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        for sock in sockets:
            accepting = BatchAccept(sock, factory, config.backlog, config.ssl)
            self.servers.append(cast(asyncio.Server, accepting))
        self._listening = True

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


DEFAULT_SEND_BUFFER_BYTES = 256 * 1024


def build_server(
    app: App,
    host: str,
    port: int,
    log_level: str = "info",
    *,
    signals: bool = True,
    send_buffer: int = DEFAULT_SEND_BUFFER_BYTES,
    ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None,
) -> Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        log_level=log_level,
        lifespan="on",
        ws_max_size=MAX_MESSAGE_BYTES,  # larger frames are closed with 1009
        # Compression would run once per client on bytes encoded once for all, and keep a
        # zlib context per connection: off, so fan-out stays cheap in CPU and memory.
        ws_per_message_deflate=False,
        # wsproto holds the least per idle connection of uvicorn's WebSocket protocols
        # (bench/stream.py: 24 KiB with omnimetrics on top, against 27 with websockets);
        # its text sends take a short path (omnimetrics/ws_protocol.py).
        ws=FanoutWSProtocol,
        http=TurnTakingHttpProtocol,  # WebSocket upgrades take turns (omnimetrics/upgrades.py)
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=10,
    )
    return Server(config, signals=signals, send_buffer=send_buffer)
