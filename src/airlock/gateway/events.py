"""Live progress of a run as server-sent events: `GET /api/runs/{run_id}/events`.

Each training event (step: loss, learning rate, gradient norm, tokens per second; eval: eval
loss; checkpoint, resumed, setup, done, stopped, failed) is one SSE message with its database id,
so a client that reconnects with `Last-Event-ID` (or `?after=N`) misses nothing and sees nothing
twice. A `status` message follows every change of the run's state, and `end` closes the stream
once the run has finished. The database is read in the thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from airlock.gateway.auth import permit
from airlock.gateway.deps import AirlockDep, CallerDep, Key

events_api = APIRouter(prefix="/api")
POLL_S = 0.2
KEEP_ALIVE_S = 15.0


def sse(kind: str, data: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@events_api.get("/runs/{run_id}/events")
async def run_events(run_id: str, request: Request, airlock: AirlockDep, caller: CallerDep, after: int = 0,
                     key: Key = Depends(permit("runs:read"))) -> StreamingResponse:
    """The run's events from `after` (or the Last-Event-ID header) on, live, until it finishes."""
    from airlock.workflow.queue import run_events as read

    header = request.headers.get("last-event-id", "")
    cursor = int(header) if header.isdigit() else after
    first = await run_in_threadpool(read, airlock, caller, run_id, cursor)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        nonlocal cursor
        batch, status, quiet = first, None, 0.0
        while True:
            for event in batch["events"]:
                cursor = event["id"]
                yield sse(event["kind"], {"at": event["at"], **event["data"]}, event["id"])
            if batch["status"] != status:
                status = batch["status"]
                yield sse("status", {"status": status})
            if batch["finished"] and not batch["events"]:
                yield sse("end", {"status": status})
                return
            if batch["events"]:
                quiet = 0.0
                if len(batch["events"]) == 500:  # more are waiting: no pause
                    batch = await run_in_threadpool(read, airlock, caller, run_id, cursor)
                    continue
            await asyncio.sleep(POLL_S)
            quiet += POLL_S
            if quiet >= KEEP_ALIVE_S:
                quiet = 0.0
                yield ": keep-alive\n\n"
            if await request.is_disconnected():
                return
            batch = await run_in_threadpool(read, airlock, caller, run_id, cursor)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
