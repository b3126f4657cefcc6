"""The dashboard in headless Chromium (Playwright), against a real server on a free port."""

import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from omnimetrics.app import create_app
from omnimetrics.settings import Config, Settings, SourceConfig
from schemas.auth import issue
from tests.helpers import Reply, Upstream, free_port, serve, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("OMNIMETRICS_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("OMNIMETRICS_SCREENSHOTS", ROOT / "build" / "screenshots"))
# As root in a sandboxless container, and with no network but loopback.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: `make test` installs it"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


class Watched:
    """A page and everything it reported to its console."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"pageerror: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"{message.type}: {message.text}")

    def state(self, path: str) -> Any:
        return self.page.evaluate(f"window.omnimetrics.state.{path}")

    def tile(self, name: str) -> str:
        return self.page.inner_text(f"#tile-{name} .value")

    def connection(self) -> str:
        return self.page.inner_text("#connection-text")


@pytest.fixture
def page(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield Watched(context.new_page())
    context.close()


def push(base: str, value: float, tool: str = "a", metric: str = "metrics.total_tokens_saved",
         kind: str = "counter") -> int:  # fmt: skip
    body = {"source": "compression", "kind": kind, "tool_id": tool, "metrics": {metric: value}}
    response = httpx.post(f"{base}/ingest", json=body)
    assert response.status_code == 202, response.text
    seq: int = response.json()["seq"]
    return seq


def chart_equals_rest(page: Watched, base: str, **filters: str) -> None:
    """The page's tokens-saved buckets equal /api/v1/increase for the same window."""
    window = page.state("window")
    buckets = page.page.evaluate(
        "Object.fromEntries([...window.omnimetrics.state.series.tokens_saved.buckets]"
        ".map(([t, v]) => [String(t), v]))"
    )
    params = {"metric": "metrics.total_tokens_saved", "step": "1m", **filters,
              "from": _iso(window["start"]), "to": _iso(window["end"])}  # fmt: skip
    rest = httpx.get(f"{base}/api/v1/increase", params=params).json()["buckets"]
    want = {str(_ms(b["t"])): b["value"] for b in rest}
    assert buckets == want
    assert sum(want.values()) > 0


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def test_the_page_loads_clean_and_its_tiles_follow_the_data(page: Watched, tmp_path: Path) -> None:
    with serve(create_app(Settings(db=tmp_path / "d.duckdb"), Config(sources=[]))) as base:
        for value in (100, 250):
            push(base, value)
        push(base, 0.61, metric="mlx_metrics.cache_hit_rate", kind="gauge")
        page.page.goto(base + "/")
        wait_for(lambda: page.connection() == "live")
        wait_for(lambda: page.tile("tokens_saved") == "150")
        assert page.tile("cache_hit_rate") == "61.0%"
        for value in (400, 1000):
            last = push(base, value)
        wait_for(lambda: page.state("lastSeq") == last)
        wait_for(lambda: page.tile("tokens_saved") == "900")
        push(base, 0.8, metric="mlx_metrics.cache_hit_rate", kind="gauge")
        wait_for(lambda: page.tile("cache_hit_rate") == "80.0%")
        assert page.page.inner_text("#sources").startswith("compression")
        chart_equals_rest(page, base)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.page.screenshot(path=SCREENSHOTS / "dashboard.png", full_page=True)
        page.page.set_viewport_size({"width": 390, "height": 844})  # a phone
        wait_for(lambda: page.page.evaluate("document.body.scrollWidth <= 390"))
        page.page.screenshot(path=SCREENSHOTS / "dashboard-phone.png", full_page=True)
    assert page.problems == []


def test_a_restart_leaves_no_hole_in_the_charts(page: Watched, tmp_path: Path) -> None:
    port, path = free_port(), tmp_path / "r.duckdb"
    value = 0

    def more(n: int, base: str) -> int:
        nonlocal value
        last = 0
        for _ in range(n):
            value += 7
            last = push(base, value)
        return last

    with serve(create_app(Settings(db=path), Config(sources=[])), port=port) as base:
        more(3, base)
        page.page.goto(base + "/")
        wait_for(lambda: page.connection() == "live")
        last = more(3, base)
        wait_for(lambda: page.state("lastSeq") == last)
    # The server is gone: the page keeps trying, and says so.
    wait_for(lambda: int(page.page.get_attribute("#connection", "data-attempt") or 0) >= 2,
             timeout=15)  # fmt: skip
    assert "attempt" in page.connection()
    with serve(create_app(Settings(db=path), Config(sources=[])), port=port) as base:
        last = more(5, base)  # some before the page is back, resumed from its cursor
        wait_for(lambda: page.connection() == "live", timeout=40)
        last = more(2, base)
        wait_for(lambda: page.state("lastSeq") == last)
        chart_equals_rest(page, base)
        assert page.state("loads") == 1  # resumed, not reloaded
    assert page.problems == [] or all("WebSocket" in p or "ERR_CONNECTION" in p
                                      for p in page.problems)  # fmt: skip


def test_a_filter_changes_what_is_shown_without_a_reload(page: Watched, tmp_path: Path) -> None:
    with serve(create_app(Settings(db=tmp_path / "f.duckdb"), Config(sources=[]))) as base:
        for a, b in ((10, 100), (15, 300)):
            push(base, a, tool="a")
            push(base, b, tool="b")
        page.page.goto(base + "/")
        wait_for(lambda: page.tile("tokens_saved") == "205")
        page.page.evaluate("window.__still_the_same_page = true")
        page.page.fill("input[name=tool_id]", "a")
        page.page.click("#filters button[type=submit]")
        wait_for(lambda: page.tile("tokens_saved") == "5")
        assert page.page.evaluate("window.__still_the_same_page") is True
        assert "tool_id=a" in page.page.url
        last = push(base, 20, tool="a")
        push(base, 1000, tool="b")  # not shown
        wait_for(lambda: page.state("lastSeq") == last)
        wait_for(lambda: page.tile("tokens_saved") == "10")
        time.sleep(0.5)
        assert page.tile("tokens_saved") == "10"
        chart_equals_rest(page, base, tool_id="a")
    assert page.problems == []


def test_the_settings_panel_slows_and_stops_the_stream(
    page: Watched, tmp_path: Path, upstream: Upstream
) -> None:
    body = b'{"metrics": {"total_tokens_saved": 5}}'
    sources = [SourceConfig(name="compression", url=upstream.script("/s", Reply(body=body)))]
    app = create_app(Settings(db=tmp_path / "s.duckdb"), Config(sources=sources))
    with serve(app) as base:
        page.page.goto(base + "/")
        wait_for(lambda: page.connection() == "live")

        def per_second(seconds: float) -> float:
            before = page.state("messages")
            time.sleep(seconds)
            return float(page.state("messages") - before) / seconds

        assert per_second(3) >= 0.6  # a tick a second
        page.page.select_option("#profile", "low_frequency")
        wait_for(lambda: "low_frequency" in page.page.inner_text("#settings-message"))
        time.sleep(1.2)  # the tick the change runs at once
        assert per_second(6) <= 0.4  # one every 5 s
        settings = httpx.get(f"{base}/settings").json()["settings"]
        assert settings["performance_profile"] == "low_frequency"
        page.page.uncheck("#streaming")
        wait_for(lambda: "metrics streaming is disabled in settings" in page.connection())
        assert page.page.get_attribute("#connection", "data-state") == "refused"
        page.page.check("#streaming")
        wait_for(lambda: page.connection() == "live")
    assert page.problems == []


def test_the_dashboard_takes_a_token_when_auth_is_on(page: Watched, tmp_path: Path) -> None:
    secret = "a-dashboard-secret-that-is-long-enough-42"
    settings = Settings(db=tmp_path / "a.duckdb", jwt_secret=secret)
    expires = int(time.time()) + 3600
    writer = {"Authorization": f"Bearer {issue(secret, 'acme', ['write'], expires)}"}
    reader = issue(secret, "acme", ["read", "admin"], expires)
    with serve(create_app(settings, Config(sources=[]))) as base:
        for value in (100, 160):
            body = {"source": "compression", "kind": "counter",
                    "metrics": {"metrics.total_tokens_saved": value}}  # fmt: skip
            assert httpx.post(f"{base}/ingest", json=body, headers=writer).status_code == 202
        # Without a token the page asks for one...
        page.page.goto(base + "/")
        page.page.wait_for_selector("#login:not([hidden])")
        assert "credential is required" in page.page.inner_text("#login-message")
        page.page.fill("#login input[name=token]", reader)
        page.page.click("#login button")
        wait_for(lambda: page.connection() == "live")
        wait_for(lambda: page.tile("tokens_saved") == "60")
        assert page.page.inner_text("#settings-tenant") == "(acme)"
        # ...and takes one from its address too, without keeping it there.
        fresh = page.page.context.new_page()
        fresh.goto(f"{base}/#token={reader}")
        wait_for(lambda: fresh.inner_text("#tile-tokens_saved .value") == "60")
        assert "token" not in fresh.url
    unauthorized = [p for p in page.problems if "401" not in p]
    assert unauthorized == []
