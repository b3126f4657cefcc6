"""How the process logs: readable text by default, one JSON object a line with
`--log-format json` (`OMNIMETRICS_LOG_FORMAT`), both on stderr, through one config that
uvicorn applies (its own loggers and ours alike).

Access lines for `GET /metrics` and `GET /health` that answered 200 are left out: they
are monitoring's probes (a Prometheus, a load balancer, the demo's scrape of itself),
and their steady lines would hide everything else."""

import logging
import time
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any, Literal, TypeVar

import orjson

LogFormat = Literal["text", "json"]
TEXT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
PROBES = frozenset(("/metrics", "/health"))
T = TypeVar("T")
# Set in the demo upstreams' tasks: their servers' lifecycle lines ("Started server
# process", "Shutting down") are uvicorn's, on the loggers the main server uses too.
_QUIET: ContextVar[bool] = ContextVar("omnimetrics_quiet", default=False)


async def quietly(work: Awaitable[T]) -> T:
    """Await `work` (in a task of its own) with its records below WARNING left out."""
    _QUIET.set(True)
    return await work


class TextFormatter(logging.Formatter):
    """`2026-12-02T10:00:00.123Z INFO    omnimetrics: ...` (times in UTC)."""

    def __init__(self) -> None:
        super().__init__(TEXT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class JsonFormatter(TextFormatter):
    """`{"time", "level", "logger", "message"}`, plus `exception` (its traceback) when
    there is one, and for access lines `client`, `method`, `path`, `status`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = _access(record)
        if access is not None:
            line.update(access)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def _access(record: logging.LogRecord) -> dict[str, Any] | None:
    """uvicorn's access line arguments: (client, method, path, HTTP version, status)."""
    args = record.args
    if record.name != "uvicorn.access" or not isinstance(args, tuple) or len(args) != 5:
        return None
    client, method, path, _, status = args
    return {"client": client, "method": method, "path": path, "status": status}


class Quiet(logging.Filter):
    """Drops the access lines of probes that answered 200, and what `quietly` runs
    below WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _QUIET.get() and record.levelno < logging.WARNING:
            return False
        access = _access(record)
        if access is None:
            return True
        path = str(access["path"]).split("?", 1)[0]
        return not (path in PROBES and access["status"] == 200)


def log_config(level: str, fmt: LogFormat = "text") -> dict[str, Any]:
    """A `logging.config.dictConfig` for uvicorn's `log_config`."""
    formatter = {"()": JsonFormatter if fmt == "json" else TextFormatter}
    handler = {"class": "logging.StreamHandler", "formatter": "main",
               "stream": "ext://sys.stderr"}  # fmt: skip
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "filters": {"quiet": {"()": Quiet}},
        "handlers": {"main": {**handler, "filters": ["quiet"]}},
        "loggers": {
            "uvicorn": {"handlers": ["main"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {
                "handlers": ["main"],
                "level": level.upper(),
                "propagate": False,
            },  # fmt: skip
            "omnimetrics": {"level": level.upper()},
            "apscheduler": {"level": "ERROR"},  # jobs.py says what was skipped, once a minute
        },
        "root": {"handlers": ["main"], "level": "WARNING"},  # libraries: warnings and worse
    }
