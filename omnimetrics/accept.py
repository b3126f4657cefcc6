"""Accepting connections in batches, on any event loop.

libuv (and so uvloop) accepts one connection per round of the event loop
(libuv/libuv#3696, "unix: don't accept() connections in a loop"). On a busy loop that
is a few hundred a second: when a thousand clients reconnect at once, the kernel's
accept queue holds them for seconds, and a request that arrives behind them (`/health`,
a push) waits all that while before the server even sees it. asyncio's own loop accepts
up to the backlog each round; this does the same on any loop: the listening socket is
watched with `add_reader`, every connection waiting is accepted, and each is handed to
the loop as an accepted socket (`connect_accepted_socket`), with uvicorn's protocol.
"""

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

log = logging.getLogger("omnimetrics.server")

RESOURCE_PAUSE_SECONDS = 1.0  # out of file descriptors: stop accepting for a moment


class BatchAccept:
    """One listening socket; the part of asyncio's `Server` that uvicorn uses."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        backlog: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._factory = protocol_factory
        self._backlog = backlog
        self._ssl = ssl_context
        self._pending: set[asyncio.Task[object]] = set()
        self._closed = False
        sock.setblocking(False)
        sock.listen(backlog)
        self._loop.add_reader(sock.fileno(), self._accept)

    @property
    def sockets(self) -> list[socket.socket]:
        return [self._sock]

    def _accept(self) -> None:
        for _ in range(self._backlog):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # none left waiting
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept connections (%s); pausing 1 s", exc.strerror)
                    self._loop.remove_reader(self._sock.fileno())
                    self._loop.call_later(RESOURCE_PAUSE_SECONDS, self._resume)
                    return
                raise
            conn.setblocking(False)
            task = self._loop.create_task(self._connect(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        except (OSError, ssl.SSLError):
            conn.close()  # the peer left, or its TLS handshake failed: nothing to serve

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._sock.fileno())

    async def wait_closed(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending)
