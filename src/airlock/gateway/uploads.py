"""Receiving a raw upload: streamed to a temporary file in the appliance home, counted on the way.

A body over the limit is refused as soon as it is known to be over (by its Content-Length, or
when the running count passes the limit), before it is all read, and its partial file removed:
an oversized upload stores nothing and never fills the disk or the memory. Writes run in a
thread, so a slow disk never holds up the event loop that proxies inference.

Uploads at once are bounded, per key and in all (`upload_slot`): each holds a disk file and a
thread while it is validated, and the gateway that receives them also serves /v1.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from airlock.errors import InvalidInput, RateLimited, TooLarge

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


# How long a client refused a slot is asked to wait: about what validating and storing a large
# upload takes on a small host.
SLOT_RETRY_AFTER_S = 5.0


class UploadSlots:
    """Uploads in progress, in all and per key. Only the event loop's thread touches it, and a
    slot is taken with no await between the check and the count, so no lock is needed."""

    def __init__(self, total: int, per_key: int) -> None:
        self.total, self.per_key = total, per_key
        self.by_key: dict[str, int] = {}

    @property
    def in_progress(self) -> int:
        return sum(self.by_key.values())

    def take(self, key_id: str) -> None:
        mine = self.by_key.get(key_id, 0)
        if mine >= self.per_key:
            raise RateLimited(f"API key {key_id} already has {mine} upload(s) in progress, the most one key may "
                              f"have at once (AIRLOCK_MAX_UPLOADS_PER_KEY={self.per_key}); try again when it "
                              "has finished", retry_after=SLOT_RETRY_AFTER_S)
        if self.in_progress >= self.total:
            raise RateLimited(f"{self.in_progress} uploads are in progress, the most this appliance takes at once "
                              f"(AIRLOCK_MAX_UPLOADS={self.total}); try again shortly",
                              retry_after=SLOT_RETRY_AFTER_S)
        self.by_key[key_id] = mine + 1

    def give_back(self, key_id: str) -> None:
        left = self.by_key.pop(key_id) - 1
        if left:
            self.by_key[key_id] = left


@asynccontextmanager
async def upload_slot(request: Request, key_id: str) -> AsyncIterator[None]:
    """A slot for one upload by `key_id` for the block's duration, or 429 with Retry-After."""
    state, settings = request.app.state, request.app.state.settings
    if getattr(state, "upload_slots", None) is None:
        state.upload_slots = UploadSlots(settings.max_uploads, settings.max_uploads_per_key)
    slots: UploadSlots = state.upload_slots
    slots.take(key_id)
    try:
        yield
    finally:
        slots.give_back(key_id)


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
