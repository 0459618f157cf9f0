"""Driving a page in a real browser (sync Playwright, Debian's chromium) and asserting what the web
UI promises: no request leaves the appliance's origin, no console or page error (a Content
Security Policy violation is reported as a console error), no critical accessibility violation
(axe-core), and a full-page screenshot to look at afterwards."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page

from airlock.config import REPO_ROOT

SCREENSHOTS_ENV = "AIRLOCK_SCREENSHOTS"
DEFAULT_SCREENSHOTS = REPO_ROOT / "test-results" / "screenshots"
# A page that hangs fails its test in seconds, not after Playwright's default 30 s.
ACTION_TIMEOUT_MS = 10_000
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
SCREENSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class RecordedPage:
    """A page in a browser context of its own, with everything it asked for and complained about."""

    page: Page
    context: BrowserContext
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def record_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            # "Failed to load resource" names no URL itself; where it came from does.
            self.console_errors.append(f"{message.text} (at {message.location.get('url') or 'the page'})")

    def close(self) -> None:
        self.context.close()

    def __enter__(self) -> RecordedPage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_page(browser: Browser, base_url: str, path: str = "/") -> RecordedPage:
    """`path` of `base_url` in a fresh context, recorded from its first request on. Requests are
    recorded on the context, so those of a window the page opens count too."""
    context = browser.new_context(base_url=base_url)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    page = context.new_page()
    recorded = RecordedPage(page, context)
    context.on("request", lambda request: recorded.requests.append(request.url))
    page.on("websocket", lambda socket: recorded.requests.append(socket.url))
    page.on("console", recorded.record_console)
    page.on("pageerror", lambda error: recorded.page_errors.append(str(error)))
    try:
        page.goto(path)
    except BaseException:
        recorded.close()  # a page that did not load leaves no browser context behind
        raise
    return recorded


def origin_of(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url.removeprefix("blob:"))  # a blob: URL carries the origin that made it
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return scheme, parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme)


def assert_same_origin(requests: list[str], base_url: str) -> None:
    """Every recorded URL is on `base_url`'s origin; data: URLs never leave the page."""
    home = origin_of(base_url)
    elsewhere = [url for url in requests if not url.startswith("data:") and origin_of(url) != home]
    assert not elsewhere, f"requests that leave {base_url}'s origin:\n  " + "\n  ".join(elsewhere)


def assert_no_errors(recorded: RecordedPage) -> None:
    problems = [f"console: {text}" for text in recorded.console_errors]
    problems += [f"page error: {text}" for text in recorded.page_errors]
    assert not problems, f"{recorded.page.url}:\n  " + "\n  ".join(problems)


def check_accessibility(page: Page, name: str) -> list[dict]:
    """Runs axe-core on the page and fails on any critical violation; returns all violations.
    axe is evaluated through the DevTools protocol, which a strict Content-Security-Policy does not
    govern: a <script> tag with axe in it would be refused on the web UI's pages."""
    with _scroll_kept(page):
        violations = Axe().run(page).response["violations"]
    critical = [v for v in violations if v["impact"] == "critical"]
    lines = [f"{v['id']}: {v['help']} at {', '.join(_selector(node['target']) for node in v['nodes'])}"
             for v in critical]
    assert not critical, f"{name}: critical accessibility violations:\n  " + "\n  ".join(lines)
    return violations


def look(page: Page, name: str) -> None:
    """A page a journey passes: checked for accessibility, and photographed."""
    check_accessibility(page, name)
    screenshot(page, name)


def _selector(target: list) -> str:
    # Within an iframe or shadow root the target is a chain of selectors, one per document.
    return " >>> ".join(part if isinstance(part, str) else " >>> ".join(part) for part in target)


def screenshot(page: Page, name: str) -> Path:
    """A full-page PNG `name`.png in $AIRLOCK_SCREENSHOTS (default test-results/screenshots)."""
    assert SCREENSHOT_NAME.fullmatch(name), f"{name!r}: a screenshot's name is one file name"
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or DEFAULT_SCREENSHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    with _scroll_kept(page):
        page.screenshot(path=path, full_page=True)
    return path


@contextmanager
def _scroll_kept(page: Page) -> Iterator[None]:
    """Put the page back where it was scrolled to: after axe or a full-page capture has scrolled
    it, headless chromium sends the next clicks to what was under the pointer before (measured:
    a submit button's click landed on its form), until the page scrolls again."""
    x, y = page.evaluate("[window.scrollX, window.scrollY]")
    try:
        yield
    finally:
        page.evaluate("([x, y]) => window.scrollTo(x, y)", [x, y])
