"""Fetching one source once: a total deadline, a body cap, and every failure as text.

Requests go through one aiohttp session, directly: at 1,000 targets a second the client
is most of the event loop's work, and httpx's layers over it (even on aiohttp's
connection pool, as before) cost about a third of each request here (bench/scrape.py,
BENCHMARKS.md). Redirects are never followed; bodies are decoded (gzip, deflate) before
the size cap, so a small compressed body cannot expand past it.
"""

import asyncio
import functools
import time
from typing import NamedTuple

import aiohttp
import yarl

from ingest.parse import ParseError, Samples, parse_json
from ingest.prometheus import PrometheusParser
from ingest.sources import Source

MAX_BODY_BYTES = 10 * 1024 * 1024

_HEADERS = {
    "json": {"Accept": "application/json"},
    "prometheus": {"Accept": "text/plain;version=0.0.4;q=0.9,*/*;q=0.1"},
}
CHUNK_BYTES = 64 * 1024


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


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ScrapeError(f"body of {int(declared)} bytes is over the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        size += len(chunk)
        if size > limit:  # decoded bytes: a small compressed body cannot expand past it
            raise ScrapeError(f"body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _describe(exc: aiohttp.ClientError) -> str:
    """A failed request as one line; a refused connection says so plainly."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        return f"cannot connect: {exc}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@functools.lru_cache(maxsize=65_536)
def _url(text: str) -> yarl.URL:
    """A source's URL parsed once, not on every request (aiohttp parses a str each time)."""
    return yarl.URL(text)


async def scrape(
    client: aiohttp.ClientSession,
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
        async with asyncio.timeout(time_limit):
            headers = _HEADERS[source.format]
            url = _url(source.url)
            async with client.get(url, headers=headers, allow_redirects=False) as response:
                if response.status != 200:
                    raise ScrapeError(f"HTTP {response.status} {response.reason}")
                body = await _read_capped(response, MAX_BODY_BYTES)
        fetched = time.perf_counter()
        if source.format == "prometheus":
            parser = parser if parser is not None else PrometheusParser()
            samples = parser.parse(body, source.kinds, source.sample_limit)
        else:
            samples = Samples.of(parse_json(body, source.kind_of, source.sample_limit))
    except TimeoutError:
        error = f"timed out after {time_limit:g} s"
    except aiohttp.ClientError as exc:
        error = _describe(exc)
    except (ScrapeError, ParseError) as exc:
        error = str(exc)
    ended = time.perf_counter()
    if fetched is None:  # failed before the last byte: all of it was the target's time
        return Scrape(source, Samples(), ended - started, error, 0.0, queued)
    return Scrape(source, samples, fetched - started, error, ended - fetched, queued)
