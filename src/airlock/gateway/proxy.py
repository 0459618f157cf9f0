"""The connection to the locked engine: one pooled aiohttp session, the engine's secret, and the
one retry that is always safe.

aiohttp rather than httpx: its C-accelerated HTTP parser costs a fraction of the CPU per
request, and on a host where vLLM keeps the cores busy every millisecond of gateway CPU shows
up as latency.
"""

from __future__ import annotations

import errno
import logging
import time

import aiohttp
from yarl import URL

from airlock.config import Settings
from airlock.errors import NotReady
from airlock.gateway.errors import UpstreamError, UpstreamTimeout
from airlock.gateway.metrics import Metrics
from airlock.serve.engine import read_secret

log = logging.getLogger("airlock.gateway")

# A stopped engine refuses a connect at once; only a busy one is slow to accept. 0.5 s gave
# 503s to 5 of 16 concurrent requests on a loaded 2-core host (CI), so the bound is wider.
CONNECT_TIMEOUT_S = 2.0
# A long generation on a busy CPU legitimately takes minutes between bytes.
READ_TIMEOUT_S = 600.0
# Errors that mean the engine had closed a pooled connection before reading the request on it.
_CLOSED_BEFORE_READ = (errno.EPIPE, errno.ECONNRESET)


class EngineDown(NotReady):
    """The engine is gone: a connection to it cannot be opened or was refused under the request.
    `unsent`: the engine cannot have read the request, so another replica may take it; False when
    an earlier try on a pooled connection ended in a clean close, which may come after the engine
    read it (it died holding it)."""

    def __init__(self, message: str, unsent: bool = True) -> None:
        super().__init__(message)
        self.unsent = unsent


class Engine:
    """The pooled session to the engine and the engine's current secret."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.name = settings.serve_base_model  # the engine's label in the metrics
        self.session: aiohttp.ClientSession | None = None
        self.fresh: aiohttp.ClientSession | None = None  # new connection per request: retries
        self.headers: dict[str, str] = {}
        self._urls: dict[str, URL] = {}
        self.reload_secret()

    def reload_secret(self) -> None:
        # A few bytes from a local file: cheaper than any SQLite call, and rare (engine restarts).
        self.headers = {"content-type": "application/json",
                        "authorization": f"Bearer {read_secret(self.settings)}"}

    def url(self, path: str) -> URL:
        """Absolute URLs, parsed once per path rather than joined to the base on every request."""
        if (url := self._urls.get(path)) is None:
            url = self._urls[path] = URL(self.settings.vllm_url + path)
        return url

    def _session(self, *, pooled: bool) -> aiohttp.ClientSession:
        s = self.settings
        # Pooled connections are dropped after engine_pool_idle_s, before the engine's own
        # keep-alive closes them: a request then never meets a connection closing under it.
        options = {"keepalive_timeout": s.engine_pool_idle_s} if pooled else {"force_close": True}
        connector = (aiohttp.UnixConnector(path=str(s.engine_socket), limit=512, **options)
                     if s.engine_transport == "uds"
                     else aiohttp.TCPConnector(limit=512, limit_per_host=512, **options))
        return aiohttp.ClientSession(
            base_url=s.vllm_url, connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S),
            trust_env=False,  # only the engine is ever reached: no proxies from the environment
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # the engine sets none; skip the per-request work
        )

    def open(self) -> None:
        self.session = self._session(pooled=True)
        self.fresh = self._session(pooled=False)

    async def close(self) -> None:
        for session in (self.session, self.fresh):
            if session is not None:
                await session.close()

    async def post(self, path: str, content: bytes) -> aiohttp.ClientResponse:
        """POST JSON to the engine and return its response once the headers are in.

        A pooled connection the engine closed before reading the request on it fails before any
        answer byte; that request is sent once more, on a fresh connection (the engine never
        saw it, so it cannot run twice). A 401 means the engine restarted with a new secret:
        re-read it and send again. Transport failures raise NotReady, UpstreamTimeout or
        UpstreamError, each counted.
        """
        started, unsent = time.perf_counter(), True
        try:
            try:
                resp = await self._send(self.session, path, content)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if not _closed_before_read(exc):
                    raise
                self.metrics.count_upstream_error(self.name, "stale_connection_retried")
                unsent = _undelivered(exc)
                resp = await self._send(self.fresh, path, content)
            if resp.status == 401:
                resp.release()
                self.reload_secret()
                resp = await self._send(self.session, path, content)
            self.metrics.observe_upstream(self.name, time.perf_counter() - started)
            return resp
        except (aiohttp.ClientConnectionError, ConnectionError) as exc:
            self.metrics.count_upstream_error(self.name, "unreachable")
            message = (f"the model server is not reachable ({type(exc).__name__}); "
                       "it may be starting or restarting, try again shortly")
            if _undelivered(exc):  # the engine is gone; whether another replica may take it: gateway/pool.py
                raise EngineDown(message, unsent) from None
            raise NotReady(message) from None
        except TimeoutError:
            self.metrics.count_upstream_error(self.name, "timeout")
            raise UpstreamTimeout("the model server did not answer in time") from None
        except aiohttp.ClientError as exc:
            self.metrics.count_upstream_error(self.name, "transport")
            raise UpstreamError(f"the connection to the model server failed: {type(exc).__name__}") from None

    async def _send(self, session: aiohttp.ClientSession, path: str, content: bytes) -> aiohttp.ClientResponse:
        return await session.post(self.url(path), data=content, headers=self.headers)


def _undelivered(exc: Exception) -> bool:
    """Whether the engine's side cannot have read the request: the connect failed, the write
    found the socket closed (EPIPE: the engine was gone), or the engine's side closed with the
    request still unread in its buffer (ECONNRESET). A clean close (ServerDisconnectedError) may
    come after the engine read it, so it is not."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return True
    return isinstance(exc, aiohttp.ClientOSError | ConnectionError) and getattr(exc, "errno", None) in _CLOSED_BEFORE_READ


def _closed_before_read(exc: Exception) -> bool:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return False  # the connect itself failed: the engine is down, not a stale connection
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return getattr(exc, "errno", None) in _CLOSED_BEFORE_READ

