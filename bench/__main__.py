"""Run every benchmark and print its figures (and ratios to same-run baselines)."""

import asyncio
import sys

from bench import ingest


def main() -> int:
    print(f"# omnimetrics benchmarks ({sys.version.split()[0]})")
    asyncio.run(ingest.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
