"""A separate process serving N JSON `/stats/{i}` upstreams, for the collection benchmark."""

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


app = Starlette(routes=[Route("/stats/{i:int}", stats)])

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
