"""Real things for tests: a scripted HTTP upstream, a uvicorn server on a free port."""

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson

from ingest.bulk import BULK_BYTES
from omnimetrics.server import build_server


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


class Upstream:
    """A local HTTP server whose answers per path are scripted by the test.

    Each path has a queue of replies; the last one repeats. Every request is counted.
    """

    def __init__(self) -> None:
        self.scripts: dict[str, deque[Reply]] = {}
        self.requests: Counter[str] = Counter()
        self._release = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                upstream.requests[self.path] += 1
                queue = upstream.scripts.get(self.path)
                if not queue:
                    self.send_error(404)
                    return
                reply = queue.popleft() if len(queue) > 1 else queue[0]
                if reply.delay and upstream._release.wait(reply.delay):
                    return
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(reply.body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def script(self, path: str, *replies: Reply) -> str:
        self.scripts[path] = deque(replies)
        return self.url(path)

    def __enter__(self) -> "Upstream":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()  # let hanging handlers go
        self._server.shutdown()
        self._server.server_close()


def serve_demo(port: int, db: Path) -> tuple[list[str], dict[str, str]]:
    """The command and environment of `omnimetrics serve --demo` as the CLI runs it, on
    `port` and `db`, its demo upstreams on free ports, logging warnings only."""
    env = {**os.environ, "OMNIMETRICS_LOG_LEVEL": "warning",
           "OMNIMETRICS_DEMO_EMBEDDINGS_PORT": str(free_port()),
           "OMNIMETRICS_DEMO_COMPRESSION_PORT": str(free_port())}  # fmt: skip
    command = [sys.executable, "-m", "omnimetrics.cli", "serve", "--demo", "--port", str(port),
               "--db", str(db)]  # fmt: skip
    return command, env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until `condition()` is truthy and return it; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@contextlib.contextmanager
def serve(app: Any, port: int = 0, loops: list[Any] | None = None) -> Iterator[str]:
    """Run `app` under a real uvicorn server (on a free port by default); yields its URL.
    `loops`, if given, receives the server's event loop (to look at its tasks)."""
    server = build_server(app, "127.0.0.1", port, "warning", signals=False)

    def run() -> None:
        async def main() -> None:
            if loops is not None:
                loops.append(asyncio.get_running_loop())
            await server.serve()

        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), timeout=20)
    if not server.started:
        raise RuntimeError("server did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


class StalledWebSocket:
    """A WebSocket client on a raw socket that completes the handshake, then stops
    reading until told to drain. Its receive buffer is tiny, so the server sees it stall."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def drain(self, timeout: float = 30.0) -> tuple[list[bytes], tuple[int, str] | None]:
        """Read until the server closes: the text messages, and the close code and reason."""
        self.sock.settimeout(timeout)
        data = bytearray()
        while chunk := self.sock.recv(1 << 16):
            data += chunk
        self.sock.close()
        messages, close, i = [], None, 0
        while i + 2 <= len(data):
            opcode, length, i = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
            if length == 126:
                length, i = int.from_bytes(data[i : i + 2], "big"), i + 2
            elif length == 127:
                length, i = int.from_bytes(data[i : i + 8], "big"), i + 8
            payload, i = bytes(data[i : i + length]), i + length
            if opcode == 1:
                messages.append(payload)
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if payload else 1005
                close = (code, payload[2:].decode())
        return messages, close


class Push:
    """POST /ingest with a body of either size: small bodies are checked per event, large
    ones per column (`ingest.bulk`); JSON whitespace makes a body large, nothing else."""

    def __init__(self, large: bool) -> None:
        self.large = large

    def __call__(self, url: str, body: Any, **kwargs: Any) -> httpx.Response:
        raw = orjson.dumps(body) + (b" " * BULK_BYTES if self.large else b"")
        headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
        return httpx.post(url, content=raw, headers=headers, **kwargs)


class Traced:
    """A cursor that counts the statements run on it."""

    def __init__(self, cur: Any, reads: list[str]) -> None:
        self._cur, self._reads = cur, reads

    def execute(self, sql: str, params: Any = None) -> Any:
        self._reads.append(sql)
        return self._cur.execute(sql, params)

    def __getattr__(self, name: str) -> Any:  # register, unregister: not statements
        return getattr(self._cur, name)


class RedisServer:
    """A real `redis-server` (Debian's, which `make test` installs) on a free port, without
    persistence: a restart loses everything, as a crash of such a Redis does."""

    def __init__(self, folder: Path, port: int | None = None, **options: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is missing: `make test` installs it "
                                 "(scripts/system-packages.sh)")  # fmt: skip
        self.binary, self.folder, self.port = binary, folder, port or free_port()
        self.options = {"save": "", "appendonly": "no", "bind": "127.0.0.1",
                        "stream-node-max-entries": "100", **options}  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [self.binary, "--port", str(self.port), "--dir", str(self.folder)]
        for name, value in self.options.items():
            args += [f"--{name}", value]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, timeout=10)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.resume()
        self.stop()
