"""The OpenAI-compatible proxy: check the caller's scope and limits, resolve the model name,
forward to the locked engine, relay the answer.

Keys and aliases come from the in-memory registry (never SQLite on the event loop). The original
bytes are forwarded untouched unless the model name has to be rewritten. Responses are relayed
chunk by chunk as vLLM sends them; nothing is buffered for streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from airlock.config import Settings
from airlock.errors import NotReady
from airlock.gateway.errors import (BadRequest, ModelNotFound, UpstreamError, UpstreamTimeout, error_body,
                                    error_response)
from airlock.gateway.limits import check_completion_request
from airlock.gateway.metrics import Metrics
from airlock.gateway.registry import Snapshot
from airlock.serve.engine import read_secret

log = logging.getLogger("airlock.gateway")

# Local connects are answered or refused in well under a millisecond; a connect that takes
# longer means vLLM is down or wedged, and the caller must hear so within a second.
CONNECT_TIMEOUT_S = 0.5
# A long generation on a busy CPU legitimately takes minutes between bytes.
READ_TIMEOUT_S = 600.0

# Headers vLLM sets that an app may use; hop-by-hop and length headers are the server's business.
_PASS_HEADERS = ("content-type", "x-request-id")


class Engine:
    """The pooled session to the engine and the engine's current secret."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.session: aiohttp.ClientSession | None = None
        self.bearer = ""
        self.reload_secret()

    def reload_secret(self) -> None:
        # A few bytes from a local file: cheaper than any SQLite call, and rare (engine restarts).
        self.bearer = f"Bearer {read_secret(self.settings)}"

    def open(self) -> None:
        """One pooled session for the process. aiohttp rather than httpx: its C-accelerated HTTP
        parser costs a fraction of the CPU per request, and on a host where vLLM keeps the cores
        busy every millisecond of gateway CPU shows up as latency."""
        s = self.settings
        connector = (aiohttp.UnixConnector(path=str(s.engine_socket), limit=512, keepalive_timeout=60)
                     if s.engine_transport == "uds"
                     else aiohttp.TCPConnector(limit=512, limit_per_host=512, keepalive_timeout=60))
        self.session = aiohttp.ClientSession(
            base_url=s.vllm_url, connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S),
            trust_env=False,  # only the engine is ever reached: no proxies from the environment
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def post(self, path: str, content: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """POST, retried once with a re-read secret when the engine restarted and says 401."""
        resp = await self.session.post(path, data=content, headers={**headers, "authorization": self.bearer})
        if resp.status != 401:
            return resp
        resp.release()
        self.reload_secret()
        return await self.session.post(path, data=content, headers={**headers, "authorization": self.bearer})


def resolve_model(snapshot: Snapshot, key: dict[str, Any], settings: Settings, name: str) -> tuple[str, bool]:
    """(the model name vLLM knows, whether it is an alias). A model outside the key's scope is
    answered exactly like one that does not exist: no oracle for what is served."""
    scope = key.get("models")
    if scope is None or name in scope:
        if (row := snapshot.aliases.get(name)) is not None:
            return row["lora_name"], True
        if name == settings.serve_base_model:
            return name, False
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
    key, snapshot = request.state.api_key, request.state.snapshot
    try:
        raw = await request.body()
    except ClientDisconnect:
        # The client hung up while sending: nobody is left to answer, and nothing was forwarded.
        return Response(status_code=499)
    body = parse_body(raw, required)
    check_completion_request(body, path, state.settings)
    requested = body["model"]
    upstream_model, is_alias = resolve_model(snapshot, key, state.settings, requested)
    state.limiter.admit(key)
    state.recorder.used(key["id"])
    if upstream_model != body["model"]:
        body["model"] = upstream_model
        raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
    headers = {"content-type": "application/json"}
    if request_id := request.headers.get("x-request-id"):
        headers["x-request-id"] = request_id
    charge = (lambda n: state.limiter.charge(key, n)) if key.get("tpm") else None
    resp = await send_upstream(state.engine, state.metrics, path, raw, headers,
                               stream=bool(body.get("stream")), charge=charge)
    if resp.status_code == 404 and is_alias:
        # The alias exists but the engine does not have its adapter: it restarted and the
        # reconciler is still verifying and loading it, or the adapter failed verification.
        return error_response(f"the model {requested!r} is not loaded in the engine right now "
                              "(it is being verified and restored); retry shortly",
                              503, NotReady.code, headers={"Retry-After": "2"})
    return resp


async def send_upstream(engine: Engine, metrics: Metrics, path: str, content: bytes, headers: dict[str, str], *,
                        stream: bool, charge: Callable[[int], None] | None = None) -> Response:
    started = time.perf_counter()
    try:
        resp = await engine.post(path, content, headers)
    except (aiohttp.ClientConnectionError, ConnectionError) as exc:
        metrics.count_upstream_error("unreachable")
        raise NotReady(f"the model server is not reachable ({type(exc).__name__}); "
                       "it may be starting or restarting, try again shortly") from None
    except asyncio.TimeoutError:
        metrics.count_upstream_error("timeout")
        raise UpstreamTimeout("the model server did not answer in time") from None
    except aiohttp.ClientError as exc:
        metrics.count_upstream_error("transport")
        raise UpstreamError(f"the connection to the model server failed: {type(exc).__name__}") from None
    metrics.observe_upstream(time.perf_counter() - started)
    out_headers = {k: v for k in _PASS_HEADERS if (v := resp.headers.get(k))}

    # Errors (vLLM's own 4xx included) and plain answers are small: read them whole and relay.
    if not stream or resp.status >= 400:
        try:
            data = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            metrics.count_upstream_error("transport")
            raise UpstreamError(f"the model server broke off its answer: {type(exc).__name__}") from None
        finally:
            resp.release()
        if charge is not None and resp.status == 200:
            charge(_usage_tokens(data))
        return Response(content=data, status_code=resp.status, headers=out_headers)
    return StreamingResponse(_relay(resp, metrics, charge), status_code=resp.status, headers=out_headers,
                             background=BackgroundTask(resp.close))


def _usage_tokens(data: bytes) -> int:
    try:
        return int(json.loads(data).get("usage", {}).get("total_tokens") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0


async def _relay(resp: aiohttp.ClientResponse, metrics: Metrics,
                 charge: Callable[[int], None] | None) -> AsyncIterator[bytes]:
    """vLLM's bytes as they arrive; a broken upstream ends the stream with an SSE error event.
    With a token limit, each event counts as one token (vLLM sends one event per token)."""
    events = 0
    try:
        async for chunk in resp.content.iter_any():
            if charge is not None:
                events += chunk.count(b"data: ")
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
        if charge is not None:
            charge(events)
