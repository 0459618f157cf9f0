"""What the gateway answers from memory: API keys, aliases, running canaries and the worker's heartbeat.

The event loop never touches SQLite. A snapshot is read in a worker thread; before each request
the gateway stats the database file and its WAL (two syscalls) and, when any process committed
since the snapshot, awaits a fresh one read in a thread, so an alias switch or a revocation
applies to the very next request. A stalled database holds a request back at most
`STALE_WAIT_S`; after that the last snapshot answers and the refresh goes on in the background.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from airlock.access.keys import load_keys
from airlock.meta import Meta
from airlock.serve.canary import Canary, running_canaries

STALE_WAIT_S = 0.2


@dataclass(frozen=True)
class Snapshot:
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    aliases: dict[str, dict[str, Any]] = field(default_factory=dict)
    worker_heartbeat: str | None = None
    engine_asleep: dict[str, Any] | None = None  # {"run_id", "retry_after_s"} while training sleeps it
    canaries: dict[str, Canary] = field(default_factory=dict)  # alias -> its running canary
    taken_at: float = 0.0


def read_snapshot(meta: Meta) -> Snapshot:
    aliases = {r["name"]: r for r in meta.query(
        "SELECT name, model_id, lora_name, base_model, updated_at, audience, revoked_note FROM aliases")}
    beat = meta.one("SELECT MAX(heartbeat_at) AS at FROM workers")
    asleep = meta.one("SELECT run_id, retry_after_s FROM engine_sleep ORDER BY since LIMIT 1")
    return Snapshot(keys=load_keys(meta), aliases=aliases, worker_heartbeat=beat["at"] if beat else None,
                    engine_asleep=asleep, canaries=running_canaries(meta), taken_at=time.time())


class Registry:
    def __init__(self, meta: Meta) -> None:
        self.meta = meta
        self._paths = (str(meta.path), str(meta.path) + "-wal")
        self._signature: tuple = ()
        self._snapshot = Snapshot()
        self._refresh: asyncio.Future | None = None

    def _stat(self) -> tuple:
        sig = []
        for path in self._paths:
            try:
                st = os.stat(path)
                sig.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                sig.append(None)
        return tuple(sig)

    def load(self) -> Snapshot:
        """Read a snapshot now (blocking): for start-up, before the loop serves requests."""
        signature = self._stat()
        self._snapshot = read_snapshot(self.meta)
        self._signature = signature
        return self._snapshot

    async def current(self) -> Snapshot:
        signature = self._stat()
        if signature == self._signature:
            return self._snapshot
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._reload(signature))
        try:
            await asyncio.wait_for(asyncio.shield(self._refresh), STALE_WAIT_S)
        except TimeoutError:
            pass
        return self._snapshot

    async def _reload(self, signature: tuple) -> None:
        snapshot = await asyncio.to_thread(read_snapshot, self.meta)
        # The signature was taken before the read: a commit during it triggers another reload.
        self._snapshot, self._signature = snapshot, signature
