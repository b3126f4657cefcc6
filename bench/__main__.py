"""Run every benchmark and print its figures (and ratios to same-run baselines)."""

import asyncio
import sys

from bench import (
    catchup,
    gateway,
    history,
    ingest,
    latest,
    push,
    retention,
    scrape,
    soak,
    storm,
    stream,
)


def main() -> int:
    only = sys.argv[1] if len(sys.argv) > 1 else None
    print(f"# omnimetrics benchmarks ({sys.version.split()[0]})")
    if only in (None, "ingest"):
        asyncio.run(ingest.run())
    if only in (None, "push"):
        push.run()
    if only in (None, "scrape"):
        scrape.run()
    if only in (None, "stream"):
        stream.run()
    if only in (None, "catchup"):
        catchup.run()
    if only in (None, "storm"):
        storm.run()
    if only in (None, "gateway"):
        gateway.run()
    if only in (None, "history"):
        history.run()
    if only in (None, "latest"):
        latest.run()
    if only in (None, "retention"):
        retention.run()
    if only in (None, "soak"):  # 20 minutes unless `soak --minutes N`
        soak.run(sys.argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
