"""The gateway in front of the locked engine. `create_app(settings)` builds it, `serve_gateway`
runs it as the gateway service.

The front (front.py) sends /v1 to the OpenAI API handler (v1.py) and everything else to the
FastAPI app built here: the control API under /api and the operational routes. State lives on
`app.state` (settings, the in-memory registry of keys and aliases, the engine session, the rate
limiter, the recorder that writes off the event loop, metrics), so tests can build as many
independent gateways as they like from different settings.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import aiohttp
from starlette.concurrency import run_in_threadpool
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from airlock.access.failures import AuthFailures
from airlock.access.ratelimit import RateLimiter
from airlock.access.sessions import Sessions
from airlock.config import Settings, get_settings
from airlock.gateway.control import api
from airlock.gateway.deps import open_context
from airlock.gateway.engine_metrics import SCRAPE_TIMEOUT_S, EngineMetrics
from airlock.gateway.events import events_api
from airlock.gateway.gate_api import gate_api
from airlock.gateway.errors import install_error_handlers
from airlock.gateway.auth import permit
from airlock.gateway.front import Front
from airlock.gateway.hosts import MetricsListener
from airlock.gateway.limits import RequestLimits
from airlock.gateway.metrics import Metrics
from airlock.promotion.metrics import GateCollector
from airlock.serve.engine import engine_client
from airlock.serve.fleet import fleet, replica_settings
from airlock.gateway.pool import EnginePool
from airlock.gateway.proxy import Engine
from airlock.gateway.recorder import Recorder
from airlock.gateway.canary import CanaryJudge
from airlock.gateway.registry import Registry
from airlock.gateway.v1 import OpenAIApi
from airlock.tls import check_configured

# /readyz must answer quickly even when vLLM hangs: a probe that hangs is a failed probe.
_READY_TIMEOUT_S = 1.0
# The worker beats every 2 s; a heartbeat older than this means it is down.
_WORKER_ALIVE_S = 10.0


ops = APIRouter()


@ops.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@ops.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 while every served base model has a replica that answers (serving works); every
    component's state, and each replica's, either way."""
    state = request.app.state
    members = state.engines.members
    replicas = dict(zip([m.name for m in members],
                        await asyncio.gather(*(_engine_state(m.engine) for m in members)), strict=True))
    serving = {m.replica.model for m in members if replicas[m.name] == "ready"}
    missing = sorted({m.replica.model for m in members} - serving)
    snapshot = await state.registry.current()
    worker = "alive" if _recent(snapshot.worker_heartbeat) else "down"
    engine = "ready" if not missing else next(replicas[m.name] for m in members if m.replica.model in missing)
    body = {"status": "not ready" if missing else "ready", "model": state.settings.serve_base_model,
            "models": sorted({m.replica.model for m in members}),
            "components": {"gateway": "ready", "engine": engine, "worker": worker}, "engines": replicas}
    return JSONResponse(body, status_code=503 if missing else 200)


async def _engine_state(engine: Engine) -> str:
    try:
        async with engine.session.get("/health", timeout=aiohttp.ClientTimeout(total=_READY_TIMEOUT_S)) as resp:
            return "ready" if resp.status == 200 else f"unhealthy (HTTP {resp.status})"
    except (TimeoutError, aiohttp.ClientError) as exc:
        return f"unreachable ({type(exc).__name__})"


async def _served_adapters(registry: Registry, base: str) -> set[str]:
    """The adapters a replica of `base` must hold before it rejoins the rotation: those of every
    alias and staging name on that base that is not revoked."""
    snapshot = await registry.current()
    return {row["lora_name"] for row in snapshot.aliases.values()
            if row["base_model"] == base and not row.get("revoked_note")}


def _scrape(settings: Settings) -> str:
    return engine_client(settings).metrics_text(SCRAPE_TIMEOUT_S)


def _recent(iso: str | None) -> bool:
    try:
        return iso is not None and datetime.fromisoformat(iso) > datetime.now(UTC) - timedelta(seconds=_WORKER_ALIVE_S)
    except ValueError:
        return False


@ops.get("/metrics", dependencies=[Depends(permit("metrics"))])
async def metrics(request: Request) -> PlainTextResponse:
    """A key with the `metrics` permission; a scraper without one uses AIRLOCK_METRICS_PORT. Rendered
    in a thread: the gate's figures are read from SQLite, which the event loop never waits on."""
    return PlainTextResponse(await run_in_threadpool(request.app.state.metrics.render),
                             media_type="text/plain; version=0.0.4")


def create_app(settings: Settings | None = None, ui: Callable[[FastAPI], None] | None = None) -> Front:
    """The gateway; `ui` adds the web UI's routes (airlock.web.install), which build on this
    package and so are handed in rather than imported."""
    settings = settings or get_settings()
    settings.ensure_dirs()  # made private, and refused if other users can open it
    # The one context every route and page is handed (gateway/deps.py): one database handle and
    # one audit anchor per gateway, never a second opened beside it.
    airlock = open_context(settings)
    meta = airlock.meta

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.registry.load()  # before the first request: the loop never reads SQLite
        app.state.limiter.load(meta.query("SELECT key_id, kind, level, updated FROM rate_buckets"))
        app.state.recorder.start()
        app.state.canaries.open()
        app.state.engines.open()
        scrape = MetricsListener(settings, app.state.metrics.render) if settings.metrics_port else None
        if scrape is not None:
            scrape.start()
        try:
            yield
        finally:
            if scrape is not None:
                scrape.close()
            await app.state.engines.close()
            await app.state.canaries.close()
            app.state.recorder.close()

    app = FastAPI(title="airlock gateway", version="1", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.meta = meta
    app.state.airlock = airlock
    app.state.registry = Registry(meta)
    app.state.canaries = CanaryJudge(meta, app.state.registry)
    app.state.limiter = RateLimiter()
    app.state.failures = AuthFailures(settings.auth_fail_limit, settings.auth_fail_window_s)
    app.state.recorder = Recorder(meta, rate_state=app.state.limiter.changed_rows,
                                  auth_failures=app.state.failures.summaries)
    app.state.metrics = Metrics()
    app.state.metrics.registry.register(GateCollector(meta))
    app.state.engines = pool = EnginePool(settings, app.state.metrics, fleet(settings),
                                          functools.partial(_served_adapters, app.state.registry))
    app.state.metrics.registry.register(EngineMetrics({
        m.name: functools.partial(_scrape, replica_settings(settings, m.replica)) for m in pool.members}))
    app.state.started = int(datetime.now().timestamp())
    app.state.sessions = Sessions(lifetime_s=settings.web_session_hours * 3600)
    install_error_handlers(app)
    # Oversized bodies never reach a route or a parser (the front bounds headers).
    app.add_middleware(RequestLimits, settings=settings)
    app.include_router(ops)
    app.include_router(api)
    app.include_router(events_api)
    app.include_router(gate_api)
    if ui is not None:
        ui(app)
    return Front(app, OpenAIApi(app.state), settings, app.state.metrics)


def serve_gateway(settings: Settings | None = None, *, log_level: str = "info",
                  ui: Callable[[FastAPI], None] | None = None) -> None:
    """Run the gateway in the foreground on settings.gateway_host:gateway_port until stopped,
    over TLS when settings.tls_cert and tls_key are set."""
    import uvicorn

    settings = settings or get_settings()
    tls = {}
    if settings.tls_enabled:
        check_configured(settings)
        tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    # httptools, named rather than picked by "auto": h11 would answer an oversized header block
    # itself with a bare 400 and a reset, before RequestLimits can name the setting.
    uvicorn.run(create_app(settings, ui), host=settings.gateway_host, port=settings.gateway_port,
                http="httptools", log_level=log_level, proxy_headers=False, server_header=False, **tls)
