"""The uvicorn server as omnimetrics runs it, for the CLI and the tests alike."""

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from omnimetrics.accept import BatchAccept
from omnimetrics.app import App
from omnimetrics.upgrades import TurnTakingHttpProtocol
from omnimetrics.ws_protocol import FanoutWSProtocol
from stream.ws import MAX_MESSAGE_BYTES

log = logging.getLogger("omnimetrics")


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
            sockets = [listen_socket(self.config.host, self.config.port)]
        if self._send_buffer:
            # Accepted connections inherit the listener's send buffer. Capped, a client
            # that stops reading pins at most this much kernel memory, and backpressure
            # reaches its bounded queue instead of the kernel's multi-megabyte autotuning.
            for sock in sockets:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
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
            log.info("serving on %s://%s (Ctrl+C stops)", "https" if config.is_ssl else "http",
                     address(*sock.getsockname()[:2]))  # fmt: skip
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
        """uvicorn's handlers, without its raising the signal again once the shutdown is
        done: a SIGTERM that shut the server down cleanly exits 0, not -15."""
        if self._signals:
            with super().capture_signals():
                yield
                self._captured_signals.clear()
        else:
            yield


DEFAULT_SEND_BUFFER_BYTES = 256 * 1024


LISTEN_BACKLOG = 2048  # uvicorn's default; BatchAccept sets the configured one again


class CannotListen(Exception):
    """The address cannot be listened on; the message says which and why, in a line."""


def address(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets (as in a URL)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A socket bound to `host:port` (as uvicorn binds one), or CannotListen: a port in
    use is one line before anything starts, not uvicorn's exit from inside a task.
    `reuse_port`: shared with the other processes that bind it so (the kernel spreads
    new connections between them: a gateway's `--workers`)."""
    where = address(host, port)
    try:
        family, kind, proto, _, bind_to = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {where}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(bind_to)
    except OSError as exc:
        sock.close()
        why = (exc.strerror or str(exc)).lower()
        raise CannotListen(f"cannot listen on {where}: {why}") from None
    # Listening at once: a connection made before the server accepts (the demo's first
    # scrape of its own /metrics, during startup) waits in the backlog, not refused.
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


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
    log_config: dict[str, Any] | None = None,
) -> Server:
    """The server for `app`; `log_config` (omnimetrics/logs.py) replaces uvicorn's own."""
    config = uvicorn.Config(
        app,
        log_config=log_config if log_config is not None else LOGGING_CONFIG,
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
