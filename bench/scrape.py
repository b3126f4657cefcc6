"""[W2 2/5]: 1,000 Prometheus-text targets x 50 series (served by a separate process) at a
1 s tick for 60 s, through `omnimetrics serve` as the CLI runs it: ticks skipped, tick
p99, and the server's CPU (utime + stime from /proc) per scraped sample; then a real
Prometheus server (Debian's 2.42; `make bench` installs it) scraping the same targets the
same way, for its CPU per scraped sample in the same run."""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench.ingest import upstream_process
from bench.upstreams import SERIES

TARGETS = 1_000
SECONDS = 61  # /health summarizes the last 60 ticks: all inside this window
WARM_SECONDS = 5


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _health(port: int) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()
    return body


def _serve(tmp: Path, upstream: int) -> tuple[subprocess.Popen[bytes], int]:
    config = tmp / "scrape.toml"
    config.write_text("".join(
        f'[[sources]]\nname = "t{i}"\nurl = "http://127.0.0.1:{upstream}/metrics/{i}"\n'
        'format = "prometheus"\n'
        for i in range(TARGETS)
    ))  # fmt: skip
    port = int(subprocess.check_output([sys.executable, "-c", "import socket; s = socket."
                                        "socket(); s.bind(('127.0.0.1', 0)); "
                                        "print(s.getsockname()[1])"]))  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnimetrics.cli", "serve", "--config", str(config),
         "--db", str(tmp / "scrape.duckdb"), "--port", str(port)],
        env={**os.environ, "OMNIMETRICS_LOG_LEVEL": "warning"},
    )  # fmt: skip
    for _ in range(300):
        try:
            if _health(port)["collection"].get("local", {}).get("ticks_run", 0) > 0:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start ticking")


async def _bare_fetches(upstream: int, rounds: int = 20) -> list[float]:
    """The floor: the same 1,000 GETs at once, bodies read and dropped, nothing else."""
    urls = [f"http://127.0.0.1:{upstream}/metrics/{i}" for i in range(TARGETS)]
    connector = aiohttp.TCPConnector(limit=2 * TARGETS, limit_per_host=0)
    times = []
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(url: str) -> bytes:
            async with session.get(url) as response:
                return await response.read()

        for _ in range(rounds + 1):  # the first opens the connections
            started = time.perf_counter()
            await asyncio.gather(*(get(url) for url in urls))
            times.append(time.perf_counter() - started)
            await asyncio.sleep(max(0.0, 1.0 - times[-1]))
    return sorted(times[1:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _prometheus(tmp: Path, upstream: int) -> tuple[float, float] | None:
    """Prometheus scraping the same targets at 1 s for SECONDS: (CPU seconds, samples
    scraped), or None when it is not installed."""
    binary = shutil.which("prometheus")
    if binary is None:
        return None
    targets = [
        {"targets": [f"127.0.0.1:{upstream}"],
         "labels": {"__metrics_path__": f"/metrics/{i}", "instance": f"t{i}"}}
        for i in range(TARGETS)
    ]  # fmt: skip
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "bench", "static_configs": targets}],
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = _free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{api}/-/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        time.sleep(WARM_SECONDS)
        cpu0 = cpu_seconds(proc.pid)
        time.sleep(SECONDS)
        cpu1 = cpu_seconds(proc.pid)
        query = f"sum(sum_over_time(scrape_samples_scraped[{SECONDS}s]))"
        answer = httpx.get(f"{api}/api/v1/query", params={"query": query}, timeout=30).json()
        scraped = float(answer["data"]["result"][0]["value"][1])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return cpu1 - cpu0, scraped


def run() -> None:
    with tempfile.TemporaryDirectory() as name, upstream_process() as upstream:
        time.sleep(1.0)
        floor = asyncio.run(_bare_fetches(upstream))
        proc, port = _serve(Path(name), upstream)
        try:
            time.sleep(WARM_SECONDS)
            before, cpu0, t0 = _health(port), cpu_seconds(proc.pid), time.monotonic()
            time.sleep(SECONDS)
            after, cpu1, t1 = _health(port), cpu_seconds(proc.pid), time.monotonic()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        prometheus = _prometheus(Path(name), upstream)
    local0, local1 = before["collection"]["local"], after["collection"]["local"]
    ticks = local1["ticks_run"] - local0["ticks_run"]
    skipped = local1["ticks_skipped"] - local0["ticks_skipped"]
    rows = after["writer"]["last_seq"] - before["writer"]["last_seq"]
    exposed = rows * SERIES / (SERIES + 2)  # each scrape also stores up and its duration
    cpu = cpu1 - cpu0
    ups = sum(1 for s in after["sources"].values() if s["status"] == "healthy")
    tick, collect = local1["tick_seconds"], local1["collect_seconds"]
    last = list(after["sources"].values())
    waits = sorted(s.get("queue_seconds", 0.0) for s in last)
    fetches = sorted(s.get("duration_seconds", 0.0) for s in last)
    parses = sorted(s.get("parse_seconds", 0.0) for s in last)
    print(f"scrape: {TARGETS} Prometheus targets x {SERIES} series, 1 s ticks, {t1 - t0:.0f} s")
    print(f"  ticks run {ticks}, skipped {skipped} (target 0); over the last 60 ticks: "
          f"tick with its write p50 {tick['p50']:.3f} s, p99 {tick['p99']:.3f} s "
          f"(target <= 0.5), max {tick['max']:.3f} s; scrapes and parse alone p50 "
          f"{collect['p50']:.3f} s, p99 {collect['p99']:.3f} s")  # fmt: skip
    print(f"  floor, the same {TARGETS} GETs from a bare aiohttp session (this process): p50 "
          f"{floor[len(floor) // 2]:.3f} s, max {floor[-1]:.3f} s")  # fmt: skip
    print(f"  samples stored {rows:,} ({exposed / max(t1 - t0, 1e-9):,.0f} scraped/s); "
          f"targets up at the end {ups}/{TARGETS}")  # fmt: skip
    print(f"  the last tick per source: fetch (the target's time) p50 "
          f"{fetches[len(fetches) // 2] * 1000:.0f} ms, max {fetches[-1] * 1000:.0f} ms; "
          f"queued before sending p50 {waits[len(waits) // 2] * 1000:.0f} ms, max "
          f"{waits[-1] * 1000:.0f} ms; parse p50 "
          f"{parses[len(parses) // 2] * 1e6:.0f} us")  # fmt: skip
    ours = cpu / max(exposed, 1) * 1e6
    print(f"  server CPU {cpu:.1f} s: {ours:.1f} us per scraped sample (target <= 30)")
    if prometheus is None:
        print("  Prometheus: skipped (not installed; `make bench` installs it)")
        return
    prom_cpu, scraped = prometheus
    theirs = prom_cpu / max(scraped, 1) * 1e6
    print(f"  Prometheus 2.42, the same targets at 1 s for {SECONDS} s, same run: CPU "
          f"{prom_cpu:.1f} s for {scraped:,.0f} samples scraped, {theirs:.1f} us per sample; "
          f"ours / Prometheus {ours / theirs:.2f}x (the issue measured 6-13x)")  # fmt: skip
