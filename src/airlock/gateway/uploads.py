"""Receiving a raw upload: streamed to a temporary file in the appliance home, counted on the way.

A body over the limit is refused as soon as it is known to be over (by its Content-Length, or
when the running count passes the limit), before it is all read, and its partial file removed:
an oversized upload stores nothing and never fills the disk or the memory. Writes run in a
thread, so a slow disk never holds up the event loop that proxies inference.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from airlock.errors import InvalidInput, TooLarge

JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/octet-stream")


def check_jsonl_type(content_type: str | None) -> None:
    """The body is the file itself; a form or JSON body is a client mistake worth naming."""
    media = (content_type or "application/octet-stream").split(";")[0].strip().lower()
    if media not in JSONL_TYPES:
        raise InvalidInput(f"Content-Type {media!r} is not accepted for a dataset upload: send the JSONL "
                           f"file as the raw body with one of {', '.join(JSONL_TYPES)} "
                           "(curl: -H 'Content-Type: application/x-ndjson' --data-binary @file.jsonl)")


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"the upload is larger than {limit} bytes, the most this appliance accepts "
                    "(AIRLOCK_MAX_UPLOAD_BYTES); nothing was stored")


def _open_temp(folder: Path):
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return tempfile.NamedTemporaryFile(dir=folder, prefix="upload-", suffix=".part", delete=False)


@asynccontextmanager
async def received(request: Request, *, limit: int, folder: Path) -> AsyncIterator[Path]:
    """The request body in a temporary file under `folder`, removed again on the way out."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    handle = await run_in_threadpool(_open_temp, folder)
    path = Path(handle.name)
    try:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            await run_in_threadpool(handle.write, chunk)
        await run_in_threadpool(handle.close)
        yield path
    finally:
        handle.close()
        await run_in_threadpool(path.unlink, missing_ok=True)
