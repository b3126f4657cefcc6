"""Fetching one source once: a total deadline, a body cap, and every failure as text."""

import time
from typing import NamedTuple

import anyio
import httpx

from ingest.parse import ParseError, Samples, parse_json
from ingest.prometheus import PrometheusParser
from ingest.sources import Source

MAX_BODY_BYTES = 10 * 1024 * 1024

_ACCEPT = {
    "json": "application/json",
    "prometheus": "text/plain;version=0.0.4;q=0.9,*/*;q=0.1",
}


class Scrape(NamedTuple):
    source: Source
    samples: Samples
    duration_seconds: float  # the target's time: from sending the request to its last byte
    error: str | None
    parse_seconds: float = 0.0  # turning the body into samples (ours, not the target's)
    queue_seconds: float = 0.0  # from the tick's start to sending the request

    @property
    def up(self) -> bool:
        return self.error is None


class ScrapeError(Exception):
    pass


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ScrapeError(f"body of {int(declared)} bytes is over the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ScrapeError(f"body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _describe(exc: httpx.HTTPError) -> str:
    cause: BaseException | None = exc
    while cause is not None:  # httpx wraps the OS error; name it when it is a refusal
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    text = str(exc)
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def scrape(
    client: httpx.AsyncClient,
    source: Source,
    time_limit: float,
    tick_started: float | None = None,
    parser: PrometheusParser | None = None,
) -> Scrape:
    """Fetch and parse `source`, never taking longer than `time_limit` s and never raising.
    `tick_started` (perf_counter) is when its tick began: the wait until this request is
    sent is its queue time. `parser` is the source's own (it remembers its series)."""
    started = time.perf_counter()
    queued = started - tick_started if tick_started is not None else 0.0
    fetched: float | None = None
    samples = Samples()
    error: str | None = None
    try:
        with anyio.fail_after(time_limit):
            headers = {"Accept": _ACCEPT[source.format]}
            async with client.stream("GET", source.url, headers=headers) as response:
                if response.status_code != 200:
                    raise ScrapeError(f"HTTP {response.status_code} {response.reason_phrase}")
                body = await _read_capped(response, MAX_BODY_BYTES)
        fetched = time.perf_counter()
        if source.format == "prometheus":
            parser = parser if parser is not None else PrometheusParser()
            samples = parser.parse(body, source.kinds, source.sample_limit)
        else:
            samples = Samples.of(parse_json(body, source.kind_of, source.sample_limit))
    except TimeoutError:
        error = f"timed out after {time_limit:g} s"
    except httpx.HTTPError as exc:
        error = _describe(exc)
    except (ScrapeError, ParseError) as exc:
        error = str(exc)
    ended = time.perf_counter()
    if fetched is None:  # failed before the last byte: all of it was the target's time
        return Scrape(source, Samples(), ended - started, error, 0.0, queued)
    return Scrape(source, samples, fetched - started, error, ended - fetched, queued)
