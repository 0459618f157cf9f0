"""The browser harness against a real HTTP server: every page is served with the web UI's kind of
Content-Security-Policy, and each check is shown both to pass and to fail where it should."""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from browser_harness import assert_no_errors, assert_same_origin, check_accessibility, open_page, screenshot

CSP = "default-src 'self'"
ELSEWHERE = "http://127.0.0.2:9/x.png"  # another origin; nothing listens there
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def html(body: str, *, lang: str = "en", title: str = "Harness") -> bytes:
    # An icon of its own: without one the browser asks for /favicon.ico, and its 404 is a console error.
    html_open = f'<html lang="{lang}">' if lang else "<html>"
    return (f'<!doctype html>{html_open}<head><meta charset="utf-8"><title>{title}</title>'
            '<link rel="icon" href="/icon.svg"><link rel="stylesheet" href="/app.css">'
            f'<script src="/app.js" defer></script></head><body>{body}</body></html>').encode()


MAIN = '<main><h1>Models</h1><p id="status">waiting</p>{}</main>'
SITE = {
    "/": ("text/html", html(MAIN.format(""))),
    "/external.html": ("text/html", html(MAIN.format(f'<img alt="logo" src="{ELSEWHERE}">'))),
    "/inline-script.html": ("text/html", html(MAIN.format('<script>document.title = "inline ran"</script>'))),
    "/unnamed-button.html": ("text/html", html(MAIN.format('<button type="button"></button>'))),
    "/no-lang.html": ("text/html", html(MAIN.format(""), lang="")),
    "/tall.html": ("text/html", html(MAIN.format('<div class="tall"></div>'))),
    "/app.css": ("text/css", b"body { font-family: sans-serif; } .tall { height: 3000px; }"),
    "/app.js": ("text/javascript", b'document.getElementById("status").textContent = "script ran";'),
    "/icon.svg": ("image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>'),
}


class SiteHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = SITE.get(urlsplit(self.path).path)
        if found is None:
            self.send_error(404)
            return
        content_type, body = found
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # what a test shows is its assertions, not the server's access log


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), SiteHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_recorder_sees_the_pages_requests_all_on_its_origin(browser, site):
    with open_page(browser, site) as recorded:
        assert recorded.page.text_content("#status") == "script ran"  # 'self' scripts run under the CSP
        assert {f"{site}/", f"{site}/app.css", f"{site}/app.js"} <= set(recorded.requests)
        assert_same_origin(recorded.requests, site)
        assert_no_errors(recorded)


def test_a_request_to_another_origin_fails_naming_it(browser, site):
    # The CSP refuses the image, yet the request is recorded: a reference elsewhere cannot hide.
    with open_page(browser, site, "/external.html") as recorded:
        with pytest.raises(AssertionError) as failure:
            assert_same_origin(recorded.requests, site)
    assert ELSEWHERE in str(failure.value)
    assert site not in str(failure.value).split(":\n", 1)[1]


def test_an_inline_script_is_refused_and_recorded_as_a_console_error(browser, site):
    with open_page(browser, site, "/inline-script.html") as recorded:
        assert recorded.page.title() == "Harness"
        assert any("Content Security Policy" in error and "inline script" in error
                   for error in recorded.console_errors), recorded.console_errors
        with pytest.raises(AssertionError, match="Content Security Policy"):
            assert_no_errors(recorded)


def test_axe_runs_on_a_page_with_a_strict_csp_and_passes_a_well_formed_page(browser, site):
    with open_page(browser, site) as recorded:
        assert check_accessibility(recorded.page, "home") == []
        assert_no_errors(recorded)  # axe itself broke no rule of the CSP


def test_a_critical_violation_fails_with_rule_help_and_target(browser, site):
    with open_page(browser, site, "/unnamed-button.html") as recorded:
        with pytest.raises(AssertionError) as failure:
            check_accessibility(recorded.page, "unnamed button")
    message = str(failure.value)
    assert message.startswith("unnamed button: critical accessibility violations")
    assert "button-name: Buttons must have discernible text at button" in message


def test_a_violation_below_critical_is_returned_not_failed(browser, site):
    with open_page(browser, site, "/no-lang.html") as recorded:
        violations = check_accessibility(recorded.page, "no lang")
    assert [(v["id"], v["impact"]) for v in violations] == [("html-has-lang", "serious")]


def test_screenshot_writes_the_full_page_as_png(browser, site, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRLOCK_SCREENSHOTS", str(tmp_path / "shots"))
    with open_page(browser, site, "/tall.html") as recorded:
        path = screenshot(recorded.page, "tall")
    data = path.read_bytes()
    assert path == tmp_path / "shots" / "tall.png" and data.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk, first after the signature
    assert width > 0 and height >= 3000  # the whole page, not only the viewport
