"""A separate process serving upstreams for the collection benchmarks: JSON `/stats/{i}`
and Prometheus text `/metrics/{i}` (SERIES series each, in an exporter's shape)."""

import argparse
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

STARTED = time.monotonic()


def body(i: int) -> bytes:
    t = time.monotonic() - STARTED
    total = int(t * (10 + i))
    return (
        '{"status": "healthy", "metrics": {'
        f'"total_requests": {total}, "total_tokens_saved": {total * 37}, '
        f'"total_compressions": {total // 3}, "errors": {total // 100}, '
        f'"cache_hit_rate": {0.5 + (i % 7) / 20}, "avg_latency_ms": {4 + i % 11}, '
        f'"active_sessions": {i % 13}'
        '}, "mlx_metrics": {'
        f'"total_embeddings": {total * 5}, "cache_hits": {total * 3}, '
        f'"cache_misses": {total * 2}, "queue_size": {i % 5}'
        "}}"
    ).encode()


async def stats(request: Request) -> Response:
    return Response(body(int(request.path_params["i"])), media_type="application/json")


SERIES = 50
_HELP = "# HELP http_requests_total Requests served.\n# TYPE http_requests_total counter\n"
_PATHS = [f"/api/v{k % 3}/items/{k}" for k in range(SERIES - 5)]


def exposition(i: int) -> bytes:
    """SERIES series, as a prometheus-client exporter writes them: a labeled counter
    family, a histogram's buckets, a gauge."""
    t = time.monotonic() - STARTED
    total = int(t * (10 + i))
    lines = [_HELP]
    for k, path in enumerate(_PATHS):
        lines.append(f'http_requests_total{{code="200",method="get",path="{path}"}} '
                     f"{total * (k + 1)}.0\n")  # fmt: skip
    lines.append("# TYPE latency_seconds histogram\n")
    for le, share in (("0.1", 1), ("1.0", 2), ("+Inf", 3)):
        lines.append(f'latency_seconds_bucket{{le="{le}"}} {total * share}.0\n')
    lines.append(f"latency_seconds_count {total * 3}.0\n")
    lines.append(f"# TYPE queue_depth gauge\nqueue_depth {i % 7}.0\n")
    return "".join(lines).encode()


async def metrics(request: Request) -> Response:
    return Response(exposition(int(request.path_params["i"])), media_type="text/plain")


app = Starlette(routes=[Route("/stats/{i:int}", stats), Route("/metrics/{i:int}", metrics)])

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
