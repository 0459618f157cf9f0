"""The gateway: FastAPI app in front of vLLM. `create_app(settings)` builds it, `serve_gateway` runs it.

State lives on `app.state` (settings, metadata, the shared aiohttp session to vLLM, metrics) so tests and
`airlock up` can build as many independent gateways as they like from different settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncio

import aiohttp
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from airlock.config import Settings, get_settings
from airlock.errors import NotReady
from airlock.gateway.app_keys import require_key
from airlock.gateway.control import api
from airlock.gateway.errors import install_error_handlers
from airlock.gateway.metrics import Metrics, MetricsMiddleware
from airlock.gateway.proxy import forward, make_client
from airlock.meta import open_meta

# /readyz must answer quickly even when vLLM hangs: a probe that hangs is a failed probe.
_READY_TIMEOUT_S = 1.0


v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])


@v1.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    state = request.app.state
    rows = state.meta.query("SELECT name, base_model, updated_at FROM aliases ORDER BY name")
    base = state.settings.serve_base_model
    data = [_model_card(base, state.started, None)]
    data += [_model_card(r["name"], _epoch(r["updated_at"], state.started), r["base_model"])
             for r in rows if r["name"] != base]
    return {"object": "list", "data": data}


@v1.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await forward(request, "/v1/chat/completions", required="messages")


@v1.post("/completions")
async def completions(request: Request) -> Response:
    return await forward(request, "/v1/completions", required="prompt")


ops = APIRouter()


@ops.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@ops.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    client: aiohttp.ClientSession = request.app.state.client
    try:
        async with client.get("/health", timeout=aiohttp.ClientTimeout(total=_READY_TIMEOUT_S)) as resp:
            status = resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise NotReady(f"vLLM is not reachable at {request.app.state.settings.vllm_url}: {type(exc).__name__}") from None
    if status != 200:
        raise NotReady(f"vLLM answered /health with HTTP {status}")
    return JSONResponse({"status": "ready", "model": request.app.state.settings.serve_base_model})


@ops.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.app.state.metrics.render(),
                             media_type="text/plain; version=0.0.4")


def _model_card(model_id: str, created: int, parent: str | None) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "airlock",
            "parent": parent}


def _epoch(iso: str | None, default: int) -> int:
    try:
        return int(datetime.fromisoformat(iso).timestamp()) if iso else default
    except ValueError:
        return default


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One pooled client for the process: keep-alive connections to vLLM make the proxy's
        # own cost a few hundred microseconds instead of a TCP handshake per request.
        app.state.client = make_client(settings)
        try:
            yield
        finally:
            await app.state.client.close()

    app = FastAPI(title="airlock gateway", version="1", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.meta = open_meta(settings.db_path)
    app.state.metrics = Metrics()
    app.state.started = int(datetime.now().timestamp())
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.include_router(ops)
    app.include_router(v1)
    app.include_router(api)
    return app


def serve_gateway(settings: Settings | None = None, *, log_level: str = "info") -> None:
    """Run the gateway in the foreground on settings.gateway_host:gateway_port until stopped."""
    import uvicorn

    settings = settings or get_settings()
    uvicorn.run(create_app(settings), host=settings.gateway_host, port=settings.gateway_port,
                log_level=log_level, proxy_headers=False, server_header=False)
