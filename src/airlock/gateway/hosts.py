"""The names the gateway answers to, and the listener of its own for Prometheus scrapers.

DNS rebinding: a page on evil.example can make its own name resolve to the gateway's address,
and the browser then sends the page's requests (and lets the page read the answers) with
`Host: evil.example`. Refusing every Host the operator did not name (AIRLOCK_ALLOWED_HOSTS,
plus the loopback names a local probe uses) stops that, before any route runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from airlock.config import Settings
from airlock.gateway.errors import BadRequest


def host_name(header: str) -> str:
    """The name in a Host header, without its port: 'Example.org:8443' -> 'example.org',
    '[::1]:8080' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    name, _, port = header.rpartition(":")
    return (name if name and port.isdigit() else header).rstrip(".")


def check_host(header: str | None, allowed: frozenset[str]) -> BadRequest | None:
    """None when `header` names an allowed host; else the 400 to answer, saying what to set."""
    if "*" in allowed:
        return None
    if not header:
        return BadRequest("the request has no Host header; this gateway answers only requests that name it")
    if host_name(header) in allowed:
        return None
    shown = header[:100].encode("ascii", "backslashreplace").decode()
    return BadRequest(f"the Host header {shown!r} is not a name of this gateway; the operator can add it to "
                      "AIRLOCK_ALLOWED_HOSTS (names the gateway answers to, comma-separated)")


class MetricsListener:
    """GET /metrics without a key on an address of its own (AIRLOCK_METRICS_HOST:PORT), for a
    scraper on a monitoring network; its Host is checked like the gateway's. A thread of its own:
    rendering the counters never waits on the gateway's event loop, nor it on a scraper."""

    def __init__(self, settings: Settings, render: Callable[[], str]) -> None:
        allowed = settings.allowed_host_names | {settings.metrics_host.lower()}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                refused = check_host(self.headers.get("host"), allowed)
                if refused is not None:
                    self._answer(400, f"{refused}\n")
                elif self.path.split("?", 1)[0] != "/metrics":
                    self._answer(404, "only /metrics is served here\n")
                else:
                    self._answer(200, render(), "text/plain; version=0.0.4")

            def _answer(self, status: int, text: str, kind: str = "text/plain; charset=utf-8") -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # a scrape every few seconds is not news
                pass

        self.server = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="airlock-metrics", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
