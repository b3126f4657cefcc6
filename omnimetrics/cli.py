"""`omnimetrics serve`: bad flags or config exit 2 with one line, never a traceback."""

import argparse
import asyncio
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import duckdb
import uvicorn
from pydantic import ValidationError

from omnimetrics.app import create_app
from omnimetrics.demo import QuietHttpProtocol, demo_app
from omnimetrics.gateway import create_gateway
from omnimetrics.gil import share_the_gil
from omnimetrics.logs import log_config, quietly
from omnimetrics.memory import limit_malloc_arenas
from omnimetrics.server import CannotListen, Server, build_server, listen_socket
from omnimetrics.settings import Config, ConfigError, Settings, load_config
from omnimetrics.workers import supervise
from query.export import export
from schemas.compact import CompactError, compact
from schemas.db import Database
from schemas.http import describe_errors
from schemas.signals import Listener
from stream.redis_stream import gateway_start
from stream.sources import CatchUpFailed


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr and the exit code: 2 for what the user gave (flags, config,
    files), 3 for what the machine refused (a port in use)."""
    print(f"omnimetrics: error: {message}", file=sys.stderr)
    raise SystemExit(code)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="omnimetrics", description="Event-sourced metrics pipeline.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="collect, store and serve metrics")
    serve.add_argument("--config", type=Path, help="TOML config file (sources, tenants)")
    serve.add_argument("--db", type=Path, help="DuckDB file (default data/omnimetrics.duckdb)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", help="port to listen on (default 8003)")
    serve.add_argument(
        "--demo", action="store_true", default=None, help="also run simulated upstreams"
    )
    serve.add_argument("--log-format", choices=["text", "json"],
                       help="text (default) or json, a line per record")  # fmt: skip
    serve.add_argument("--redis-url", help="also append every batch to a Redis Stream "
                       "(redis://host:port/db), for gateways")  # fmt: skip
    serve.add_argument("--ssl-certfile", type=Path, help="serve https:// and wss:// (PEM)")
    serve.add_argument("--ssl-keyfile", type=Path, help="the certificate's private key (PEM)")
    gateway = commands.add_parser("gateway", help="serve streams from the writer's Redis Stream")
    gateway.add_argument("--redis-url", help="the writer's Redis (redis://host:port/db)")
    gateway.add_argument("--writer-url", help="the writer, to catch clients up from (http://...)")
    gateway.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    gateway.add_argument("--port", dest="gateway_port", help="port to listen on (default 8004)")
    gateway.add_argument("--workers", dest="gateway_workers",
                         help="processes sharing the port (SO_REUSEPORT; default 1)")  # fmt: skip
    gateway.add_argument("--log-format", choices=["text", "json"],
                         help="text (default) or json, a line per record")  # fmt: skip
    gateway.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    export_ = commands.add_parser("export", help="write samples as Parquet partitioned by day")
    export_.add_argument("--from", dest="start", required=True, type=_time, help="RFC 3339")
    export_.add_argument("--to", dest="end", required=True, type=_time, help="RFC 3339")
    export_.add_argument("--out", required=True, type=Path, help="folder to write into")
    export_.add_argument("--db", type=Path, help="DuckDB file (default data/omnimetrics.duckdb)")
    export_.add_argument("--tenant-id", help="only this tenant's samples")
    compact_ = commands.add_parser(
        "compact", help="rewrite a stopped database to its live size (after deletes)"
    )
    compact_.add_argument("--db", type=Path, help="DuckDB file (default data/omnimetrics.duckdb)")
    return parser


def _time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"time needs a zone (e.g. Z): {text!r}")
    return value


def _export(args: argparse.Namespace) -> int:
    if args.start >= args.end:
        fail("--from must be before --to")
    try:
        settings = Settings(**({"db": args.db} if args.db else {}))
    except ValidationError as exc:
        fail(describe_errors(exc.errors()))
    try:
        count = export(settings.db, args.start, args.end, args.out, args.tenant_id)
    except (duckdb.Error, OSError) as exc:
        fail(f"cannot export: {str(exc).strip().splitlines()[0]}")
    print(f"exported {count} samples to {args.out}")
    return 0


def _listen(settings: Settings) -> dict[str, socket.socket]:
    """The server's socket and the demo upstreams', bound before anything starts: a port
    in use is one line and exit 3."""
    wanted = {"omnimetrics": (settings.host, settings.port)}
    if settings.demo:
        wanted["the demo's embeddings upstream"] = ("127.0.0.1", settings.demo_embeddings_port)
        wanted["the demo's compression upstream"] = ("127.0.0.1", settings.demo_compression_port)
    bound: dict[str, socket.socket] = {}
    try:
        for what, (host, port) in wanted.items():
            bound[what] = listen_socket(host, port)
    except CannotListen as exc:
        for sock in bound.values():
            sock.close()
        fail(f"{exc} (for {what})", 3)
    return bound


def _compact(args: argparse.Namespace) -> int:
    try:
        settings = Settings(**({"db": args.db} if args.db else {}))
    except ValidationError as exc:
        fail(describe_errors(exc.errors()))
    try:
        done = compact(settings.db)
    except CompactError as exc:
        fail(str(exc))
    print(f"compacted {settings.db}: {done.before / 2**20:.1f} MiB -> {done.after / 2**20:.1f} MiB")
    return 0


async def _serve(
    settings: Settings,
    config: Config,
    sockets: dict[str, socket.socket],
    commit_listeners: Sequence[Listener] = (),
) -> None:
    """What `omnimetrics serve` runs (with the demo upstreams if asked), until a signal."""
    log_level = settings.log_level
    demos: list[tuple[Server, socket.socket]] = []
    for kind in ("embeddings", "compression") if settings.demo else ():
        sock = sockets[f"the demo's {kind} upstream"]
        cfg = uvicorn.Config(demo_app(kind), log_level="warning", log_config=None,
                             http=QuietHttpProtocol)  # fmt: skip
        demos.append((Server(cfg, signals=False), sock))  # the main server handles signals
    demo_tasks = [asyncio.create_task(quietly(server.serve([sock]))) for server, sock in demos]
    while not all(server.started for server, _ in demos):
        if any(task.done() for task in demo_tasks):
            fail("a demo upstream could not start", 3)
        await asyncio.sleep(0.05)
    app = create_app(settings, config, commit_listeners)
    main = build_server(
        app,
        settings.host,
        settings.port,
        log_level,
        send_buffer=settings.socket_send_buffer_bytes,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        log_config=log_config(log_level, settings.log_format),
    )
    try:
        await main.serve([sockets["omnimetrics"]])
    finally:
        for server, _ in demos:
            server.should_exit = True
        await asyncio.gather(*demo_tasks, return_exceptions=True)


def _check_database(settings: Settings) -> None:
    """Open the database once before serving, so a locked or unreadable file is one line."""
    try:
        Database(settings.db, memory_limit=settings.memory_limit, threads=settings.threads).close()
    except (duckdb.Error, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fail(f"cannot open database {settings.db}: {first_line}")


def _check_tls(settings: Settings) -> None:
    """A certificate and key that do not load are one line, not a traceback later."""
    if settings.ssl_certfile is None or settings.ssl_keyfile is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.ssl_certfile, settings.ssl_keyfile
        )
    except (OSError, ssl.SSLError) as exc:
        fail(f"cannot load TLS certificate/key: {exc}")


def _gateway(settings: Settings, argv: Sequence[str], reuse_port: bool) -> int:
    """`omnimetrics gateway`: one process, or `--workers N` processes on one port."""
    if settings.redis_url is None:
        fail("a gateway needs --redis-url (or OMNIMETRICS_REDIS_URL)")
    if settings.writer_url is None:
        fail("a gateway needs --writer-url (or OMNIMETRICS_WRITER_URL)")
    if settings.gateway_workers > 1:
        return supervise(settings, argv)
    try:
        sock = listen_socket(settings.host, settings.gateway_port, reuse_port=reuse_port)
    except CannotListen as exc:
        fail(str(exc), 3)
    try:
        start = asyncio.run(gateway_start(settings.redis_url, settings.redis_prefix,
                                          settings.gateway_start_seconds))  # fmt: skip
    except CatchUpFailed as exc:
        sock.close()
        fail(f"cannot start the gateway: {exc}", 3)
    app = create_gateway(settings, start)
    logs = log_config(settings.log_level, settings.log_format)
    server = build_server(app, settings.host, settings.gateway_port, settings.log_level,
                          send_buffer=settings.socket_send_buffer_bytes,
                          log_config=logs)  # fmt: skip
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(server.serve([sock]))
    return 0 if server.started or server.should_exit else 1


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed, as uvicorn itself would choose: its C loop and
    transports make the per-client writes of a fan-out cheaper (1,000 clients: 28 ms
    against 31 ms on asyncio's loop, bench/stream.py)."""
    try:
        import uvloop
    except ImportError:  # not built for this platform: asyncio's loop
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None, commit_listeners: Sequence[Listener] = ()) -> int:
    """The command line; `commit_listeners` hear the writer's commits (bench/serve_timed.py)."""
    args = _parser().parse_args(argv)
    if args.command == "export":
        return _export(args)
    if args.command == "compact":
        return _compact(args)
    extra = ("command", "reuse_port")
    overrides = {k: v for k, v in vars(args).items() if k not in extra and v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        fail(describe_errors(exc.errors()))
    limit_malloc_arenas(settings.malloc_arenas)  # before the server starts any thread
    share_the_gil()
    if args.command == "gateway":
        return _gateway(settings, argv if argv is not None else sys.argv[1:], args.reuse_port)
    try:
        config = load_config(settings.config)
    except ConfigError as exc:
        fail(str(exc))
    _check_database(settings)
    _check_tls(settings)
    sockets = _listen(settings)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(settings, config, sockets, commit_listeners))
    return 0


if __name__ == "__main__":
    sys.exit(main())
