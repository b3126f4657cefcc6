"""An httpx transport that sends requests through aiohttp.

The collector keeps httpx's client API (one shared `AsyncClient`, streaming bodies,
its errors), but httpcore's connection pool costs about 1.2 ms a request when a tick
fetches hundreds of sources at once (encode/httpx#3215): measured here, 200 concurrent
GETs took ~250 ms through it and ~40 ms through aiohttp, which decides whether a tick
fits in its interval. Bodies stream, so the collector's size cap still stops reading
early; decompression is left to httpx; redirects are never followed.
"""

from collections.abc import AsyncIterator

import aiohttp
import httpx

CHUNK_BYTES = 64 * 1024


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(CHUNK_BYTES):
                yield chunk
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        self._response.release()


def _as_httpx(exc: aiohttp.ClientError, request: httpx.Request) -> httpx.TransportError:
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Keep the OS error as the cause: it says whether the connection was refused.
        error: httpx.TransportError = httpx.ConnectError(str(exc), request=request)
        error.__cause__ = exc.os_error
        return error
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError("server disconnected", request=request)
    return httpx.ReadError(str(exc) or type(exc).__name__, request=request)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Requests through one aiohttp session with up to `max_connections` connections."""

    def __init__(self, max_connections: int) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0),
            auto_decompress=False,  # httpx decodes Content-Encoding itself
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None),  # callers bound the whole request
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread() if request.method not in ("GET", "HEAD") else None
        try:
            response = await self._session.request(
                request.method,
                str(request.url),
                headers=list(request.headers.multi_items()),
                data=body,
                allow_redirects=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent"),
            )
        except aiohttp.ClientError as exc:
            raise _as_httpx(exc, request) from exc
        return httpx.Response(
            response.status,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
            stream=_Body(response),
            request=request,
        )

    async def aclose(self) -> None:
        await self._session.close()
