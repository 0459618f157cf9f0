"""The gateway's outermost ASGI layer: what every request gets, whichever part answers it.

- an `x-request-id` on every response: the client's own when it sent one, else a new one;
- the header-size bound (400 naming AIRLOCK_MAX_HEADER_BYTES) before anything parses a header;
- the Host check (400 unless it names this gateway: AIRLOCK_ALLOWED_HOSTS) before any route runs;
- request counts by route and status for /metrics;
- `/v1/...` to the OpenAI API (a plain ASGI handler: no router or dependency injection on the
  hot path), everything else (`/api`, `/healthz`, `/readyz`, `/metrics`) to the FastAPI app.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from airlock.config import Settings
from airlock.errors import TooLarge
from airlock.gateway.errors import BadRequest, error_response
from airlock.gateway.hosts import check_host
from airlock.gateway.metrics import Metrics

# A client's request id is echoed only when it is short and visible ASCII: it lands in logs.
_MAX_REQUEST_ID = 128
_VISIBLE = re.compile(rb"[\x21-\x7e]+")


# Unique without a random draw per request: a random prefix per process and a counter.
_ID_PREFIX = b"req_" + os.urandom(8).hex().encode()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> bytes:
    return b"%s%08x" % (_ID_PREFIX, next(_ID_COUNTER))


@dataclass(slots=True)
class Head:
    """The request headers the gateway acts on, found in one pass over them."""

    request_id: bytes
    authorization: str | None = None
    content_length: int | None = None
    chunked: bool = False
    # For the web UI's playground, which calls /v1 with its session cookie instead of a key.
    cookie: str | None = None
    csrf: str | None = None
    origin: str | None = None
    host: str = ""


def read_head(scope: Scope, max_bytes: int) -> Head | BadRequest:
    # The target counts too: the HTTP parser in use (httptools) bounds neither it nor headers.
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    head = Head(b"")
    for name, value in scope["headers"]:
        size += len(name) + len(value)
        if name == b"authorization":
            head.authorization = value.decode("latin-1")
        elif name == b"content-length":
            head.content_length = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            head.chunked = True
        elif name == b"x-request-id" and len(value) <= _MAX_REQUEST_ID and _VISIBLE.fullmatch(value):
            head.request_id = value
        elif name == b"cookie":
            head.cookie = value.decode("latin-1")
        elif name == b"x-csrf-token":
            head.csrf = value.decode("latin-1")
        elif name == b"origin":
            head.origin = value.decode("latin-1")
        elif name == b"host":
            head.host = value.decode("latin-1")
    if not head.request_id:
        head.request_id = new_request_id()
    if size > max_bytes:
        name, value = max(scope["headers"], key=lambda h: len(h[0]) + len(h[1]), default=(b"", b""))
        largest = f" (the largest, {name.decode('latin-1')[:64]}, is {len(value)} bytes)" if name else ""
        return BadRequest(f"the request target and headers are {size} bytes{largest}; at most "
                          f"{max_bytes} are accepted (AIRLOCK_MAX_HEADER_BYTES)")
    return head


V1Handler = Callable[[Scope, Receive, Send, Head], Awaitable[None]]


class Front:
    def __init__(self, api: Any, v1: V1Handler, settings: Settings, metrics: Metrics) -> None:
        self.api = api  # the FastAPI app: lifespan, /api and the operational routes
        self.v1 = v1
        self.settings = settings
        self.metrics = metrics
        self.allowed_hosts = settings.allowed_host_names

    @property
    def state(self) -> Any:
        return self.api.state

    @property
    def routes(self) -> list:
        return self.api.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        head = read_head(scope, self.settings.max_header_bytes)
        if isinstance(head, Head):
            head = check_host(head.host, self.allowed_hosts) or head
        request_id = head.request_id if isinstance(head, Head) else new_request_id()
        status = 0

        async def tagged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        try:
            if not isinstance(head, Head):
                await error_response(str(head), 400, head.code, None)(scope, receive, tagged_send)
            elif scope["path"].startswith("/v1/") or scope["path"] == "/v1":
                await self.v1(scope, receive, tagged_send, head)
            else:
                scope["airlock.head"] = head
                await self.api(scope, receive, tagged_send)
        except BaseException:
            status = status or 500
            raise
        finally:
            # The route template, not the raw path: unknown paths must not grow the label set.
            # 499: the client hung up before any answer (nginx's name for it).
            route = scope.get("airlock.route") or getattr(scope.get("route"), "path", "unmatched")
            self.metrics.count_request(route, status or 499)


async def send_bytes(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
                     content_type: bytes = b"application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            *(headers or ())]})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, head: Head, cap: int, setting: str) -> bytes | None:
    """The whole request body, at most `cap` bytes (TooLarge names `setting`); None when the
    client hung up while sending."""
    if head.content_length is not None and head.content_length > cap:
        raise TooLarge(f"the request body is {head.content_length} bytes; at most {cap} are accepted ({setting})")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise TooLarge(f"the request body is over {cap} bytes, the most accepted ({setting})")
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
