"""What the /api routes and the web pages are handed: the appliance context the app opened, the
calling key, and what that key may reach in the run queue and among datasets.

One module for both, so a page shows exactly what /api answers the same key, and the web pages
never import the /api route module. Every right here is asked of access/roles.py by permission;
no role is compared by name.

    def route(airlock: AirlockDep, caller: CallerDep, key: Key = Depends(permit("runs:read"))): ...

`permit` resolves the key through `require_key`, which FastAPI runs once per request, so a route
that also takes `KeyDep`, `CallerDep` or `ReaderDep` authenticates once.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import Depends, Request

from airlock.access.holders import holder_of_key as holder_of  # the person behind a key
from airlock.access.keys import KeyRow
from airlock.access.roles import ANY_PRIORITY, MANAGES_ALL_RUNS, READS_ALL_DATASETS, READS_ALL_RUNS, may
from airlock.config import Settings
from airlock.context import Airlock
from airlock.datasets.service import Reader
from airlock.gateway.auth import actor, require_key
from airlock.meta import open_meta
from airlock.meta.anchor import Anchors
from airlock.store import ArtifactStore, open_store
from airlock.workflow.queue import MAX_PRIORITY, PRIORITIES, Caller

Key = KeyRow


class StoreOnFirstUse:
    """The artifact store, opened at its first use rather than when the gateway starts: /v1, the
    probes and the key routes answer while an S3 store is still starting or is down."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._store: ArtifactStore | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # only for what this class lacks: the store's own methods
        with self._lock:
            if self._store is None:
                self._store = open_store(self._settings)
        return getattr(self._store, name)


def open_context(settings: Settings) -> Airlock:
    """The one Airlock a gateway opens (`create_app`): its database handle and audit anchor serve
    the registry, the recorder, every route and every page."""
    settings.ensure_dirs()
    return Airlock(settings=settings, meta=open_meta(settings.db_path, Anchors.for_settings(settings)),
                   store=StoreOnFirstUse(settings))  # type: ignore[arg-type]  # an ArtifactStore once used


def airlock_of(request: Request) -> Airlock:
    """The context `create_app` opened: one database handle (and one audit anchor) per gateway."""
    return request.app.state.airlock


def reader_of(key: Key) -> Reader:
    """Whose datasets this key reads: its holder's and those shared with it, or every owner's
    where its role reads all."""
    return Reader(holder_of(key), reads_all=may(key, READS_ALL_DATASETS))


def caller_of(key: Key) -> Caller:
    """What this key may see and change in the run queue: its own runs, or every run where its
    role reads or manages all; priorities up to `high`, or up to the queue's bound."""
    return Caller(actor(key), sees_all=may(key, READS_ALL_RUNS), manages_all=may(key, MANAGES_ALL_RUNS),
                  max_priority=MAX_PRIORITY if may(key, ANY_PRIORITY) else PRIORITIES["high"],
                  changes=may(key, "runs:write"))


# async: they only read memory, so they need no hop to the thread pool.
async def _airlock(request: Request) -> Airlock:
    return airlock_of(request)


async def _caller(key: Annotated[Key, Depends(require_key)]) -> Caller:
    return caller_of(key)


async def _reader(key: Annotated[Key, Depends(require_key)]) -> Reader:
    return reader_of(key)


AirlockDep = Annotated[Airlock, Depends(_airlock)]
KeyDep = Annotated[Key, Depends(require_key)]
CallerDep = Annotated[Caller, Depends(_caller)]
ReaderDep = Annotated[Reader, Depends(_reader)]
