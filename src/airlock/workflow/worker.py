"""The worker: claims queued runs from SQLite and executes them, one at a time.

A heartbeat row tells the CLI whether a worker is alive, so `workflow run --wait` can run the
stages itself when no appliance is up.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta

from airlock.context import Airlock
from airlock.meta.db import now
from airlock.workflow.engine import execute_run

log = logging.getLogger("airlock.worker")
HEARTBEAT_S = 2.0
ALIVE_WITHIN_S = 10.0


def claim_next(airlock: Airlock, worker_id: str, run_id: str | None = None) -> str | None:
    """Atomically move the oldest queued run (or `run_id`) to 'claimed'; None if there is none."""
    with airlock.meta.write() as db:
        sql = "SELECT id FROM runs WHERE status = 'queued'" + (" AND id = ?" if run_id else "")
        rows = list(db.query(sql + " ORDER BY created_at LIMIT 1", (run_id,) if run_id else ()))
        if not rows:
            return None
        db["runs"].update(rows[0]["id"], {"status": "claimed", "worker_id": worker_id})
        return rows[0]["id"]


def _cutoff() -> str:
    return (datetime.now(UTC) - timedelta(seconds=ALIVE_WITHIN_S)).isoformat(timespec="milliseconds")


def worker_alive(airlock: Airlock) -> bool:
    return airlock.meta.one("SELECT id FROM workers WHERE heartbeat_at > ?", (_cutoff(),)) is not None


class Worker:
    def __init__(self, airlock: Airlock) -> None:
        self.airlock = airlock
        self.id = f"worker-{uuid.uuid4().hex[:8]}"
        self.stop_event = threading.Event()

    def beat(self) -> None:
        with self.airlock.meta.write() as db:
            db["workers"].upsert({"id": self.id, "pid": os.getpid(), "heartbeat_at": now()}, pk="id")

    def run_forever(self) -> None:
        self.recover()
        beats = threading.Thread(target=self._beat_until_stopped, daemon=True)
        beats.start()
        while not self.stop_event.is_set():
            run_id = claim_next(self.airlock, self.id)
            if run_id is None:
                self.stop_event.wait(0.5)
                continue
            log.info("running %s", run_id)
            execute_run(self.airlock, run_id)
        with self.airlock.meta.write() as db:
            db["workers"].delete_where("id = ?", [self.id])

    def run_one(self, run_id: str) -> str:
        """Execute one queued run in this process (the CLI does this when no worker is up)."""
        self.beat()
        beats = threading.Thread(target=self._beat_until_stopped, daemon=True)
        beats.start()
        try:
            if claim_next(self.airlock, self.id, run_id) is None:
                return "claimed-elsewhere"
            return execute_run(self.airlock, run_id)
        finally:
            self.stop_event.set()
            with self.airlock.meta.write() as db:
                db["workers"].delete_where("id = ?", [self.id])

    def _beat_until_stopped(self) -> None:
        while True:
            self.beat()
            if self.stop_event.wait(HEARTBEAT_S):
                return

    def recover(self) -> None:
        """Runs held by a worker that died are marked failed, not left hanging forever."""
        with self.airlock.meta.write() as db:
            orphaned = [r["id"] for r in db.query(
                "SELECT id FROM runs WHERE status IN ('claimed', 'running') AND (worker_id IS NULL OR worker_id NOT IN "
                "(SELECT id FROM workers WHERE heartbeat_at > ?))", [_cutoff()])]
            for run_id in orphaned:
                db.execute("UPDATE runs SET status = 'failed', error = 'the worker stopped while the run was in progress', "
                           "finished_at = ? WHERE id = ?", [now(), run_id])
                db.execute("UPDATE stages SET status = 'failed', error = 'interrupted' "
                           "WHERE run_id = ? AND status = 'running'", [run_id])

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, name="airlock-worker", daemon=True)
        thread.start()
        return thread
