"""The OpenAI-compatible proxy: resolve the model name, forward to vLLM, stream the answer back.

The hot path parses the body once, looks the model up in SQLite (one primary-key read, so an
alias switch applies to the very next request), and forwards the original bytes untouched
unless the model name has to be rewritten. Responses are relayed chunk by chunk as vLLM
sends them; nothing is buffered for streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from airlock.config import Settings
from airlock.errors import NotReady
from airlock.gateway.errors import BadRequest, ModelNotFound, UpstreamError, UpstreamTimeout, error_body
from airlock.gateway.metrics import Metrics
from airlock.meta import Meta

log = logging.getLogger("airlock.gateway")

# Loopback connects are answered or refused in well under a millisecond; a connect that takes
# longer means vLLM is down or wedged, and the caller must hear so within a second.
CONNECT_TIMEOUT_S = 0.5
# A long generation on a busy CPU legitimately takes minutes between bytes.
READ_TIMEOUT_S = 600.0
POOL_TIMEOUT_S = 5.0

# Headers vLLM sets that an app may use; hop-by-hop and length headers are the server's business.
_PASS_HEADERS = ("content-type", "x-request-id")


def make_client(settings: Settings) -> aiohttp.ClientSession:
    """One pooled session to vLLM. aiohttp rather than httpx: its C-accelerated HTTP parser
    costs a fraction of the CPU per request, and on a host where vLLM keeps the cores busy
    every millisecond of gateway CPU shows up as latency."""
    return aiohttp.ClientSession(
        base_url=settings.vllm_url,
        timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S),
        connector=aiohttp.TCPConnector(limit=512, limit_per_host=512, keepalive_timeout=60),
        # Only vLLM on loopback is ever reached: no proxies from the environment.
        trust_env=False,
        auto_decompress=False,
    )


def resolve_model(meta: Meta, settings: Settings, name: str) -> str:
    """The model name vLLM knows: an alias's adapter, or the base model itself."""
    row = meta.one("SELECT lora_name FROM aliases WHERE name = ?", (name,))
    if row is not None:
        return row["lora_name"]
    if name == settings.serve_base_model:
        return name
    raise ModelNotFound(
        f"the model {name!r} does not exist or you do not have access to it; "
        "GET /v1/models lists the models you can call"
    )


def parse_body(raw: bytes, required: str) -> dict[str, Any]:
    """Check what the gateway needs to route the request; vLLM validates the rest."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter (a string)", param="model")
    if body.get(required) is None:
        raise BadRequest(f"you must provide a {required} parameter", param=required)
    if required == "messages" and not isinstance(body["messages"], list):
        raise BadRequest("messages must be a list of {role, content} objects", param="messages")
    return body


async def forward(request: Request, path: str, required: str) -> Response:
    state = request.app.state
    raw = await request.body()
    body = parse_body(raw, required)
    upstream_model = resolve_model(state.meta, state.settings, body["model"])
    if upstream_model != body["model"]:
        body["model"] = upstream_model
        raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
    headers = {"content-type": "application/json"}
    if request_id := request.headers.get("x-request-id"):
        headers["x-request-id"] = request_id
    return await send_upstream(state.client, state.metrics, path, raw, headers,
                               stream=bool(body.get("stream")))


async def send_upstream(client: aiohttp.ClientSession, metrics: Metrics, path: str, content: bytes,
                        headers: dict[str, str], *, stream: bool) -> Response:
    started = time.perf_counter()
    try:
        resp = await client.post(path, data=content, headers=headers)
    except (aiohttp.ClientConnectionError, ConnectionError) as exc:
        metrics.count_upstream_error("unreachable")
        raise NotReady(f"the model server is not reachable ({type(exc).__name__}); "
                       "it may be starting or stopped, try again shortly") from None
    except asyncio.TimeoutError:
        metrics.count_upstream_error("timeout")
        raise UpstreamTimeout("the model server did not answer in time") from None
    except aiohttp.ClientError as exc:
        metrics.count_upstream_error("transport")
        raise UpstreamError(f"the connection to the model server failed: {type(exc).__name__}") from None
    metrics.observe_upstream(time.perf_counter() - started)
    headers = {k: v for k in _PASS_HEADERS if (v := resp.headers.get(k))}

    # Errors (vLLM's own 4xx included) and plain answers are small: read them whole and relay.
    if not stream or resp.status >= 400:
        try:
            data = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            metrics.count_upstream_error("transport")
            raise UpstreamError(f"the model server broke off its answer: {type(exc).__name__}") from None
        finally:
            resp.release()
        return Response(content=data, status_code=resp.status, headers=headers)
    return StreamingResponse(_relay(resp, metrics), status_code=resp.status, headers=headers,
                             background=BackgroundTask(resp.close))


async def _relay(resp: aiohttp.ClientResponse, metrics: Metrics) -> AsyncIterator[bytes]:
    """vLLM's bytes as they arrive; a broken upstream ends the stream with an SSE error event."""
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        metrics.count_upstream_error("transport")
        log.warning("stream from vLLM broke off: %s", exc)
        err = error_body(f"the model server broke off the stream: {type(exc).__name__}", 502,
                         UpstreamError.code)
        yield f"data: {json.dumps(err)}\n\n".encode()
    finally:
        # Closing the upstream response makes vLLM abort a generation nobody will read.
        resp.close()
