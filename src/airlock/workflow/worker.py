"""The worker service: starts queued runs from SQLite by priority, several at once where their
claims of CPU threads, memory and GPUs fit, in its own process (`airlock worker`), beside a
reconciler that keeps the engine's adapters in step with the aliases. Each training job runs in
a child process of its own (`workflow.training`).

Its heartbeat row tells others it is alive; the heartbeat stops with the main loop, so a worker
whose loop died never looks alive. A run held by a worker that is gone goes back to the queue
and resumes from its last checkpoint (a bounded number of times), never left waiting forever.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from airlock.context import Airlock
from airlock.meta.db import now
from airlock.states import RUN_ACTIVE, RunState, placeholders
from airlock.workflow.engine import execute_run
from airlock.workflow.gpu_share import fit_beside_engine, gpu_totals_mib, sleep_engine, wake_engine
from airlock.workflow.scheduler import capacity_of, never_fits, plan

log = logging.getLogger("airlock.worker")
HEARTBEAT_S = 2.0
ALIVE_WITHIN_S = 10.0
# Set by whoever restarts a worker (the supervisor) to say how the previous one ended.
LAST_EXIT_ENV = "AIRLOCK_WORKER_LAST_EXIT"


QUEUE_ORDER = "ORDER BY priority DESC, created_at"
STOP_WAIT_S = 12.0  # within the supervisor's grace for the worker


def claim_run(airlock: Airlock, worker_id: str, run_id: str, claim: dict) -> bool:
    """Atomically move `run_id` from 'queued' to 'claimed' by this worker, with what it claims."""
    with airlock.meta.write() as db:
        cursor = db.execute("UPDATE runs SET status = 'claimed', worker_id = ?, attempts = attempts + 1, "
                            "resources_json = json_set(COALESCE(resources_json, '{}'), '$.claim', json(?)) "
                            "WHERE id = ? AND status = 'queued'", [worker_id, json.dumps(claim), run_id])
        return cursor.rowcount == 1


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
        db.execute("UPDATE runs SET status = 'interrupted', error = ?, finished_at = ?, control = NULL WHERE id = ?",
                   [reason, now(), run_id])
        db.execute("UPDATE stages SET status = 'interrupted', error = ?, finished_at = ? "
                   "WHERE run_id = ? AND status = 'running'", [reason, now(), run_id])
        db.execute("UPDATE stages SET status = 'not-run' WHERE run_id = ? AND status = 'pending'", [run_id])
    airlock.meta.audit("worker", "run.interrupted", run_id, reason=reason)


def refuse_run(airlock: Airlock, run_id: str, reason: str) -> None:
    """A queued run that cannot start here fails before it starts, saying why with the numbers."""
    with airlock.meta.write() as db:
        changed = db.execute("UPDATE runs SET status = 'failed', error = ?, finished_at = ? "
                             "WHERE id = ? AND status = 'queued'", [reason, now(), run_id]).rowcount
        db.execute("UPDATE stages SET status = 'not-run' WHERE run_id = ? AND status = 'pending'", [run_id])
    if changed:
        airlock.meta.audit("worker", "run.refused", run_id, reason=reason)


def requeue(airlock: Airlock, run_id: str, reason: str) -> None:
    """Back to the queue after its worker went away; training resumes from its checkpoint."""
    from airlock.workflow.training import list_checkpoints

    steps = [c["step"] for c in list_checkpoints(airlock.settings, run_id)]
    again = f"queued again to resume from its checkpoint of step {max(steps)}" if steps else \
        "queued again to start its training over (it had no checkpoint yet)"
    with airlock.meta.write() as db:
        db.execute("UPDATE runs SET status = 'queued', worker_id = NULL, notice = ? WHERE id = ?",
                   [f"{reason}; {again}", run_id])
        db.execute("UPDATE stages SET status = 'pending' WHERE run_id = ? AND status = 'running'", [run_id])
    airlock.meta.audit("worker", "run.requeued", run_id, reason=reason)


def confine_threads(threads: int, nice: int) -> None:
    """Keep training beside serving: fewer CPU threads and a lower priority than the engine."""
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
    if nice > 0:
        os.nice(nice)


@dataclass
class Slot:
    thread: threading.Thread
    claim: dict
    priority: int
    started: str


class Worker:
    """Runs from the queue, several at once where their claims fit (`workflow.scheduler`)."""

    def __init__(self, airlock: Airlock) -> None:
        self.airlock = airlock
        self.id = f"worker-{uuid.uuid4().hex[:8]}"
        self.stop_event = threading.Event()
        self.capacity = capacity_of(airlock.settings)
        self.slots: dict[str, Slot] = {}

    def beat(self) -> None:
        with self.airlock.meta.write() as db:
            db["workers"].upsert({"id": self.id, "pid": os.getpid(), "heartbeat_at": now()}, pk="id")

    def _beat_while(self, main: threading.Thread) -> None:
        # Beats only while the thread doing the work lives: a dead loop must not look alive.
        while main.is_alive() and not self.stop_event.is_set():
            self.beat()
            self.stop_event.wait(HEARTBEAT_S)

    def _execute(self, run_id: str, claim: dict, sleeps_engine: bool = False) -> None:
        try:
            if sleeps_engine:
                sleep_engine(self.airlock, run_id, retry_after_s=60)
            execute_run(self.airlock, run_id, claim=claim, shutdown=self.stop_event.is_set)
        except Exception:  # noqa: BLE001 - a broken run must not take the other runs down
            log.exception("run %s", run_id)
            mark_interrupted(self.airlock, run_id, "the worker failed while running it (see the worker's log)")
        finally:
            if sleeps_engine:
                wake_engine(self.airlock, run_id)

    def tick(self) -> None:
        """Reap finished runs, start what fits, ask lower runs to make way for higher ones."""
        self.slots = {rid: slot for rid, slot in self.slots.items() if slot.thread.is_alive()}
        queued = []
        for row in self.airlock.meta.query(f"SELECT id, priority, resources_json FROM runs WHERE status = 'queued' "
                                           f"{QUEUE_ORDER}"):
            want = json.loads(row["resources_json"] or "{}")
            if why := never_fits(want, self.capacity):
                refuse_run(self.airlock, row["id"], f"the run cannot start on this worker: {why}")
                continue
            queued.append({"id": row["id"], "priority": row["priority"], "want": want})
        ids = list(self.slots)
        priorities = {r["id"]: r["priority"] for r in self.airlock.meta.query(
            f"SELECT id, priority FROM runs WHERE id IN ({', '.join('?' for _ in ids)})", tuple(ids))} if ids else {}
        running = [{"id": rid, "priority": priorities.get(rid, slot.priority), "claim": slot.claim,
                    "started": slot.started} for rid, slot in self.slots.items()]
        decided = plan(queued, running, self.capacity)
        totals = gpu_totals_mib() if any(claim["gpus"] for _, claim in decided.start) else {}
        for run_id, claim in decided.start:
            fit = fit_beside_engine(self.airlock, claim["gpus"], claim["memory_mb"], totals)
            if fit.decision == "refuse":
                refuse_run(self.airlock, run_id, fit.message)
                continue
            if claim_run(self.airlock, self.id, run_id, claim):
                log.info("starting %s with %s%s", run_id, claim, f" ({fit.message})" if fit.message else "")
                thread = threading.Thread(target=self._execute, args=(run_id, claim, fit.decision == "sleep"),
                                          name=f"run-{run_id}", daemon=True)
                self.slots[run_id] = Slot(thread, claim, next(q["priority"] for q in queued if q["id"] == run_id), now())
                thread.start()
        for run_id in decided.preempt:
            with self.airlock.meta.write() as db:
                db.execute("UPDATE runs SET control = 'preempt' WHERE id = ? AND control IS NULL", [run_id])

    def run_forever(self) -> None:
        """The service loop: recover, then start runs until stopped; on stop, running training
        checkpoints and goes back to the queue."""
        self.recover()
        self.beat()
        threading.Thread(target=self._beat_while, args=(threading.current_thread(),), daemon=True).start()
        try:
            while not self.stop_event.is_set():
                self.tick()
                self.stop_event.wait(0.5)
        finally:
            self.stop_event.set()
            deadline = time.monotonic() + STOP_WAIT_S
            for slot in self.slots.values():
                slot.thread.join(max(deadline - time.monotonic(), 0))
            for run_id, slot in self.slots.items():
                if slot.thread.is_alive():
                    requeue(self.airlock, run_id, "the worker was stopped (SIGTERM) during the run")
            with self.airlock.meta.write() as db:
                db["workers"].delete_where("id = ?", [self.id])

    def run_one(self, run_id: str) -> RunState | str:
        """Execute one queued run in this process (the CLI does this when no worker is up); its
        state afterwards, or `claimed-elsewhere` when another worker took it first."""
        self.beat()
        threading.Thread(target=self._beat_while, args=(threading.current_thread(),), daemon=True).start()
        try:
            claim = {"cpu_threads": max(self.airlock.settings.worker_threads, 1), "gpus": [], "memory_mb": 0}
            if not claim_run(self.airlock, self.id, run_id, claim):
                return "claimed-elsewhere"
            return execute_run(self.airlock, run_id, claim=claim)
        finally:
            self.stop_event.set()
            with self.airlock.meta.write() as db:
                db["workers"].delete_where("id = ?", [self.id])

    def recover(self) -> None:
        """Runs held by a worker that is gone (no fresh heartbeat, or its process is dead) are
        queued again to resume from their checkpoint, up to AIRLOCK_WORKER_MAX_ATTEMPTS times;
        then marked interrupted with the reason."""
        how = os.environ.get(LAST_EXIT_ENV)
        held = self.airlock.meta.query(
            "SELECT r.id, r.attempts, r.worker_id, w.pid, w.heartbeat_at FROM runs r "
            f"LEFT JOIN workers w ON w.id = r.worker_id WHERE r.status IN ({placeholders(RUN_ACTIVE)})",
            tuple(RUN_ACTIVE))
        cutoff = _cutoff()
        for run in held:
            gone = run["pid"] is None or run["heartbeat_at"] <= cutoff or not _pid_alive(run["pid"])
            if not gone:
                continue
            who = f"the worker (pid {run['pid']})" if run["pid"] else "the worker"
            reason = f"{who} stopped while the run was in progress" + (f": {how}" if how else "")
            if run["attempts"] < self.airlock.settings.worker_max_attempts:
                requeue(self.airlock, run["id"], reason)
            else:
                mark_interrupted(self.airlock, run["id"], f"{reason} (attempt {run['attempts']} of "
                                 f"{self.airlock.settings.worker_max_attempts}; `airlock runs resume` tries again)")
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

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    reconciler = threading.Thread(target=Reconciler(airlock).run_until, args=(worker.stop_event,),
                                  name="airlock-reconciler", daemon=True)
    reconciler.start()
    if settings.worker_metrics_port:
        from airlock.workflow.worker_metrics import serve_metrics

        serve_metrics(worker, settings.worker_metrics_host, settings.worker_metrics_port)
        log.info("metrics on http://%s:%d/metrics", settings.worker_metrics_host, settings.worker_metrics_port)
    log.info("worker %s (pid %d) ready; %s to hand out, %d CPU threads a run, nice %d", worker.id, os.getpid(),
             worker.capacity.describe(), settings.worker_threads, settings.worker_nice)
    worker.run_forever()
