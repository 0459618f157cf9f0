"""The gateway's writes, made off the event loop: keys' last use, how often each key called each
model (adapter or base model: the lineage view's last link), rate-limit state, audit rows for refused
requests, and the summaries of failed authentications (access/failures.py). One thread drains them about once a second (at once for audit rows),
so a slow database delays the record, never a request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import UTC, datetime
from collections.abc import Callable
from typing import Any

from airlock.meta import Meta

log = logging.getLogger("airlock.gateway")
FLUSH_EVERY_S = 1.0


class Recorder:
    def __init__(self, meta: Meta, rate_state: Callable[[], list[dict[str, Any]]] | None = None,
                 auth_failures: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.meta = meta
        self._rate_state = rate_state or (lambda: [])
        self._auth_failures = auth_failures or (lambda: [])
        self._last_used: dict[str, float] = {}
        self._calls: dict[tuple[str, str], int] = {}  # (answering model, key id) -> requests since the last flush
        self._audits: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="airlock-recorder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def used(self, key_id: str, model: str | None = None) -> None:
        at = time.time()  # formatted at the flush, not on every request
        with self._lock:
            self._last_used[key_id] = at
            if model is not None:
                self._calls[(model, key_id)] = self._calls.get((model, key_id), 0) + 1

    def refused(self, actor: str, key_id: str, permission: str, method: str, path: str) -> None:
        self._audits.put((actor, "request.refused", key_id,
                          {"permission": permission, "method": method, "path": path}))
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_EVERY_S)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - a failed write is retried next round, never fatal
                log.exception("could not record gateway state in the database")
            if self._stop.is_set():
                return

    def flush(self) -> None:
        with self._lock:
            used, self._last_used = self._last_used, {}
            calls, self._calls = self._calls, {}
        buckets = self._rate_state()
        if used or buckets or calls:
            with self.meta.write() as db:
                for key_id, at in used.items():
                    db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", [_iso(at), key_id])
                for (model, key_id), count in calls.items():
                    db.execute("INSERT INTO model_calls (model, key_id, requests, last_at) VALUES (?, ?, ?, ?) "
                               "ON CONFLICT (model, key_id) DO UPDATE SET requests = requests + excluded.requests, "
                               "last_at = excluded.last_at", [model, key_id, count, _iso(used[key_id])])
                if buckets:
                    db["rate_buckets"].upsert_all(buckets, pk=("key_id", "kind"))
        for row in self._auth_failures():
            self.meta.audit(f"address:{row['address']}", "auth.failed", row["address"],
                            failures=row["failures"], doors=row["doors"], key_ids=row["key_ids"])
        while True:
            try:
                actor, action, subject, detail = self._audits.get_nowait()
            except queue.Empty:
                return
            self.meta.audit(actor, action, subject, **detail)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
