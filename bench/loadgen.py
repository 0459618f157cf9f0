"""A small async load generator: N requests at a fixed concurrency, latencies per request.

Kept apart from the benchmark so the gateway and hand-off benchmarks time requests the same
way. Bodies are encoded once up front: the client's own CPU time per request should be as small
and as equal for both targets as it can be, since it shares the machine with what it measures.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Block:
    """What one block of requests measured."""

    latencies: list[float] = field(default_factory=list)  # seconds, whole response read
    first_bytes: list[float] = field(default_factory=list)  # seconds to the first body chunk
    wall: float = 0.0
    errors: list[str] = field(default_factory=list)


def make_client(concurrency: int) -> httpx.AsyncClient:
    # One keep-alive connection per concurrent client, no proxies from the environment.
    return httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=5.0), trust_env=False,
                             limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))


async def _one(client: httpx.AsyncClient, url: str, content: bytes, headers: dict, stream: bool, out: Block) -> None:
    started = time.perf_counter()
    first = None
    if stream:
        async with client.stream("POST", url, content=content, headers=headers) as resp:
            async for _chunk in resp.aiter_raw():
                if first is None:
                    first = time.perf_counter() - started
            status, text = resp.status_code, ""
    else:
        resp = await client.post(url, content=content, headers=headers)
        status, text = resp.status_code, resp.text
    elapsed = time.perf_counter() - started
    if status != 200:
        out.errors.append(f"HTTP {status} {text[:200]}")
        return
    out.latencies.append(elapsed)
    if first is not None:
        out.first_bytes.append(first)


async def run_block(client: httpx.AsyncClient, url: str, body: dict, headers: dict, *, requests: int,
                    concurrency: int) -> Block:
    """`requests` requests, `concurrency` of them in flight at any time."""
    content = json.dumps(body).encode()
    stream = bool(body.get("stream"))
    out, remaining = Block(), requests

    async def client_loop() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await _one(client, url, content, headers, stream, out)

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    out.wall = time.perf_counter() - started
    return out


def event_loop_runner() -> asyncio.Runner:
    """uvloop when installed (less client CPU per request, equal for both targets)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def first_content_seconds(lines: list[tuple[float, str]]) -> float | None:
    """Seconds to the first SSE `data:` event whose delta carries text, from (t, line) pairs."""
    for t, line in lines:
        if not line.startswith("data:") or line.strip() == "data: [DONE]":
            continue
        try:
            event = json.loads(line[5:])
        except json.JSONDecodeError:
            continue
        for choice in event.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                return t
    return None
