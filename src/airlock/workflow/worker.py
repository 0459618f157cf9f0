"""The worker service: claims queued runs from SQLite and executes them, one at a time, in its
own process (`airlock worker`), beside a reconciler that keeps the engine's adapters in step
with the aliases.

Its heartbeat row tells others it is alive; the heartbeat stops with the main loop, so a worker
whose loop died never looks alive. A run held by a worker that is gone is marked `interrupted`
with the reason, never left waiting forever.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from datetime import UTC, datetime, timedelta

from airlock.context import Airlock
from airlock.meta.db import now
from airlock.workflow.engine import execute_run

log = logging.getLogger("airlock.worker")
HEARTBEAT_S = 2.0
ALIVE_WITHIN_S = 10.0
# Set by whoever restarts a worker (the supervisor) to say how the previous one ended.
LAST_EXIT_ENV = "AIRLOCK_WORKER_LAST_EXIT"


class WorkerStopping(BaseException):
    """Raised in the main thread by SIGTERM: not an Exception, so no stage can swallow it."""


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_alive(airlock: Airlock) -> bool:
    return live_worker_in(airlock.meta)


def live_worker_in(meta) -> bool:
    """Whether a worker process of this database is alive: a recent heartbeat from a live pid."""
    rows = meta.query("SELECT pid FROM workers WHERE heartbeat_at > ?", (_cutoff(),))
    return any(_pid_alive(r["pid"]) for r in rows)


def mark_interrupted(airlock: Airlock, run_id: str, reason: str) -> None:
    with airlock.meta.write() as db:
        db.execute("UPDATE runs SET status = 'interrupted', error = ?, finished_at = ? WHERE id = ?",
                   [reason, now(), run_id])
        db.execute("UPDATE stages SET status = 'interrupted', error = ?, finished_at = ? "
                   "WHERE run_id = ? AND status = 'running'", [reason, now(), run_id])
        db.execute("UPDATE stages SET status = 'not-run' WHERE run_id = ? AND status = 'pending'", [run_id])
    airlock.meta.audit("worker", "run.interrupted", run_id, reason=reason)


def confine_threads(threads: int, nice: int) -> None:
    """Keep training beside serving: fewer CPU threads and a lower priority than the engine."""
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
    if nice > 0:
        os.nice(nice)


class Worker:
    def __init__(self, airlock: Airlock) -> None:
        self.airlock = airlock
        self.id = f"worker-{uuid.uuid4().hex[:8]}"
        self.stop_event = threading.Event()
        self.current: str | None = None

    def beat(self) -> None:
        with self.airlock.meta.write() as db:
            db["workers"].upsert({"id": self.id, "pid": os.getpid(), "heartbeat_at": now()}, pk="id")

    def _beat_while(self, main: threading.Thread) -> None:
        # Beats only while the thread doing the work lives: a dead loop must not look alive.
        while main.is_alive() and not self.stop_event.is_set():
            self.beat()
            self.stop_event.wait(HEARTBEAT_S)

    def run_forever(self) -> None:
        """The service loop: recover, then claim and execute runs until stopped."""
        self.recover()
        self.beat()
        threading.Thread(target=self._beat_while, args=(threading.current_thread(),), daemon=True).start()
        try:
            while not self.stop_event.is_set():
                run_id = claim_next(self.airlock, self.id)
                if run_id is None:
                    self.stop_event.wait(0.5)
                    continue
                log.info("running %s", run_id)
                self.current = run_id
                execute_run(self.airlock, run_id)
                self.current = None
        except WorkerStopping:
            if self.current:
                mark_interrupted(self.airlock, self.current, "the worker was stopped (SIGTERM) during the run")
        finally:
            self.stop_event.set()
            with self.airlock.meta.write() as db:
                db["workers"].delete_where("id = ?", [self.id])

    def run_one(self, run_id: str) -> str:
        """Execute one queued run in this process (the CLI does this when no worker is up)."""
        self.beat()
        threading.Thread(target=self._beat_while, args=(threading.current_thread(),), daemon=True).start()
        try:
            if claim_next(self.airlock, self.id, run_id) is None:
                return "claimed-elsewhere"
            return execute_run(self.airlock, run_id)
        finally:
            self.stop_event.set()
            with self.airlock.meta.write() as db:
                db["workers"].delete_where("id = ?", [self.id])

    def recover(self) -> None:
        """Runs held by a worker that is gone (no fresh heartbeat, or its process is dead) are
        marked interrupted with the reason."""
        how = os.environ.get(LAST_EXIT_ENV)
        held = self.airlock.meta.query(
            "SELECT r.id, r.worker_id, w.pid, w.heartbeat_at FROM runs r LEFT JOIN workers w ON w.id = r.worker_id "
            "WHERE r.status IN ('claimed', 'running')")
        cutoff = _cutoff()
        for run in held:
            gone = run["pid"] is None or run["heartbeat_at"] <= cutoff or not _pid_alive(run["pid"])
            if not gone:
                continue
            who = f"the worker (pid {run['pid']})" if run["pid"] else "the worker"
            mark_interrupted(self.airlock, run["id"], f"{who} stopped while the run was in progress"
                             + (f": {how}" if how else ""))
        with self.airlock.meta.write() as db:
            db.execute("DELETE FROM workers WHERE heartbeat_at <= ?", [cutoff])


def serve_worker(airlock: Airlock) -> None:
    """`airlock worker`: the worker service in the foreground until SIGTERM or Ctrl-C."""
    from airlock.serve.reconcile import Reconciler

    settings = airlock.settings
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe is noise
    confine_threads(settings.worker_threads, settings.worker_nice)
    worker = Worker(airlock)

    def stop(*_: object) -> None:
        worker.stop_event.set()
        if worker.current:
            raise WorkerStopping()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    reconciler = threading.Thread(target=Reconciler(airlock).run_until, args=(worker.stop_event,),
                                  name="airlock-reconciler", daemon=True)
    reconciler.start()
    log.info("worker %s (pid %d) ready; %d CPU threads, nice %d", worker.id, os.getpid(),
             settings.worker_threads, settings.worker_nice)
    worker.run_forever()
