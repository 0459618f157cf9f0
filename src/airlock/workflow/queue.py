"""The run queue as its users see it: priorities, owners, cancel, priority changes and resume.

The CLI (the operator on the host) and `/api` (a key) call the same functions with a `Caller`
saying what that caller may see and change: a trainer its own runs, an admin every run. A run
the caller may not see is reported as not found, so its existence leaks nothing.

The worker starts the highest-priority runnable run first, first come first served within a
priority (`workflow.worker`); a preempted run keeps its place (its creation time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from airlock.context import Airlock
from airlock.errors import Conflict, Forbidden, InvalidInput, NotFound
from airlock.meta.db import now
from airlock.states import RUN_ACTIVE, RUN_FINISHED, RUN_RESUMABLE, CancelOutcome, RunState
from airlock.workflow.runs import RunDetail, RunRow, get_run, list_runs

PRIORITIES = {"low": 0, "normal": 50, "high": 100}
NORMAL = PRIORITIES["normal"]
MAX_PRIORITY = 1000
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class QueuedRun(RunRow):
    """A run in the queue's lists (`list_queue`): its priority by name and its place in the queue."""

    priority_name: str
    position: int | None  # 1 for the queued run the worker starts next; None when not queued


class ShownRun(RunDetail):
    """One run as `show_run` shows it: its stages, its place in the queue and its checkpoints."""

    priority_name: str
    position: int | None
    checkpoints: list[dict[str, Any]]  # workflow.training.list_checkpoints


@dataclass(frozen=True)
class Caller:
    """Who asks, and how far their rights reach."""

    actor: str
    sees_all: bool = False
    manages_all: bool = False
    max_priority: int = PRIORITIES["high"]
    changes: bool = True  # may change runs at all: an approver's key only looks

    def may_change(self, owner: str) -> bool:
        """Whether this caller may cancel, reprioritise or resume a run `owner` submitted: the
        one rule /api enforces and the web UI's buttons follow."""
        return self.changes and (self.manages_all or owner == self.actor)


def operator(actor: str) -> Caller:
    """The operator on the host (the CLI): every run, every priority."""
    return Caller(actor, sees_all=True, manages_all=True, max_priority=MAX_PRIORITY)


def parse_priority(value: str | int, field: str = "priority") -> int:
    """`low`, `normal`, `high` or a whole number from 0 to 1000 (higher runs first)."""
    if isinstance(value, str) and value.strip().lower() in PRIORITIES:
        return PRIORITIES[value.strip().lower()]
    try:
        number = int(str(value).strip())
    except ValueError:
        number = None
    if number is None or isinstance(value, bool) or not 0 <= number <= MAX_PRIORITY:
        raise InvalidInput(f"{field}: {value!r} is not a priority: use low, normal, high "
                           f"or a whole number from 0 to {MAX_PRIORITY} (low=0, normal=50, high=100)")
    return number


def priority_name(value: int) -> str:
    return next((name for name, n in PRIORITIES.items() if n == value), str(value))


def parse_duration(value: str | int | float | None, field: str = "time_limit") -> float | None:
    """Seconds from `90`, `90s`, `30m`, `2h` or `1d`; None for no limit."""
    if value is None or value == "":
        return None
    match = _DURATION.match(str(value))
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)] if match else 0.0
    if seconds <= 0:
        raise InvalidInput(f"{field}: {value!r} is not a duration: write seconds or a number with "
                           "s, m, h or d, such as 90s, 30m or 2h")
    return seconds


def _visible(airlock: Airlock, caller: Caller, run_id: str) -> dict:
    row = airlock.meta.one("SELECT id, status, priority, submitted_by, finished_at FROM runs WHERE id = ?",
                           (run_id,))
    if row is None or not (caller.sees_all or row["submitted_by"] == caller.actor):
        raise NotFound(f"no run {run_id!r} that you can see; `airlock runs list` shows them")
    return row


def _manageable(airlock: Airlock, caller: Caller, run_id: str) -> dict:
    row = _visible(airlock, caller, run_id)
    if not caller.may_change(row["submitted_by"]):
        raise Forbidden(f"run {run_id} belongs to {row['submitted_by']}; only its owner or an admin may change it")
    return row


def queue_positions(airlock: Airlock) -> dict[str, int]:
    """1 for the queued run the worker starts next, then 2, 3 ..."""
    rows = airlock.meta.query("SELECT id FROM runs WHERE status = 'queued' ORDER BY priority DESC, created_at")
    return {row["id"]: n for n, row in enumerate(rows, start=1)}


def _queue_fields(run: RunRow, positions: dict[str, int]) -> dict[str, Any]:
    return {"priority_name": priority_name(run["priority"]), "position": positions.get(run["id"])}


def list_queue(airlock: Airlock, caller: Caller, *, states: list[str] | None = None,
               limit: int = 50) -> list[QueuedRun]:
    """Runs the caller may see, newest first, each with its owner, priority and queue position."""
    owner = None if caller.sees_all else caller.actor
    positions = queue_positions(airlock)
    return [QueuedRun(**r, **_queue_fields(r, positions))
            for r in list_runs(airlock, limit, owner=owner, states=states)]


def show_run(airlock: Airlock, caller: Caller, run_id: str) -> ShownRun:
    """A run with its stages, queue position and the checkpoints it holds."""
    from airlock.workflow.training import list_checkpoints

    _visible(airlock, caller, run_id)
    run = get_run(airlock, run_id)
    return ShownRun(**run, **_queue_fields(run, queue_positions(airlock)),
                    checkpoints=list_checkpoints(airlock.settings, run_id))


def cancel_run(airlock: Airlock, caller: Caller, run_id: str) -> dict:
    """A queued run is cancelled at once; a running one at its next step boundary, after a checkpoint."""
    row = _manageable(airlock, caller, run_id)
    with airlock.meta.write() as db:
        status = db.execute("SELECT status FROM runs WHERE id = ?", [run_id]).fetchone()[0]
        if status == RunState.QUEUED:
            db.execute("UPDATE runs SET status = 'cancelled', finished_at = ?, error = ? WHERE id = ?",
                       [now(), f"cancelled by {caller.actor} before it started", run_id])
            db.execute("UPDATE stages SET status = 'not-run' WHERE run_id = ? AND status = 'pending'", [run_id])
            outcome = CancelOutcome.CANCELLED
        elif status in RUN_ACTIVE:
            db.execute("UPDATE runs SET control = 'cancel', notice = ? WHERE id = ?",
                       [f"cancel requested by {caller.actor}", run_id])
            outcome = CancelOutcome.CANCELLING
        else:
            raise Conflict(f"run {run_id} already finished: {status} at {row['finished_at']}; nothing to cancel")
    airlock.meta.audit(caller.actor, "run.cancel", run_id, was=status)
    return {"run_id": run_id, "status": outcome}


def set_priority(airlock: Airlock, caller: Caller, run_id: str, priority: str | int) -> dict:
    row = _manageable(airlock, caller, run_id)
    value = parse_priority(priority)
    if value > caller.max_priority:
        raise Forbidden(f"priority {value} is above {caller.max_priority}, the highest your role may set; "
                        "an admin can set it")
    if row["status"] in RUN_FINISHED:
        raise Conflict(f"run {run_id} already finished ({row['status']}); its priority no longer matters")
    with airlock.meta.write() as db:
        db.execute("UPDATE runs SET priority = ? WHERE id = ?", [value, run_id])
    airlock.meta.audit(caller.actor, "run.priority", run_id, old=row["priority"], new=value)
    return {"run_id": run_id, "priority": value, "priority_name": priority_name(value),
            "position": queue_positions(airlock).get(run_id)}


def resume_run(airlock: Airlock, caller: Caller, run_id: str, *, time_limit: str | None = None) -> dict:
    """Queue a cancelled, failed or interrupted run again: stages that succeeded are kept, and
    training continues from its last complete checkpoint."""
    _manageable(airlock, caller, run_id)
    fields = {"status": RunState.QUEUED, "error": None, "finished_at": None, "control": None,
              "notice": f"resumed by {caller.actor}", "attempts": 0}
    if time_limit is not None:
        fields["time_limit_s"] = parse_duration(time_limit)
    with airlock.meta.write() as db:
        status = db.execute("SELECT status FROM runs WHERE id = ?", [run_id]).fetchone()[0]
        if status not in RUN_RESUMABLE:
            state = "already succeeded" if status == RunState.SUCCEEDED else f"is {status}"
            raise Conflict(f"run {run_id} {state}; only a cancelled, failed or interrupted run can be resumed")
        db["runs"].update(run_id, fields)
        db.execute("UPDATE stages SET status = 'pending', error = NULL, finished_at = NULL "
                   "WHERE run_id = ? AND status != 'succeeded'", [run_id])
    airlock.meta.audit(caller.actor, "run.resume", run_id, was=status)
    return {"run_id": run_id, "status": RunState.QUEUED, "position": queue_positions(airlock).get(run_id)}


def run_events(airlock: Airlock, caller: Caller, run_id: str, after: int = 0, limit: int = 500) -> dict:
    """The run's events after event id `after` (oldest first) and its state now: what the live
    stream of `/api/runs/{id}/events` sends."""
    import json

    row = _visible(airlock, caller, run_id)
    events = airlock.meta.query("SELECT id, at, kind, data_json FROM run_events WHERE run_id = ? AND id > ? "
                                "ORDER BY id LIMIT ?", (run_id, after, limit))
    return {"status": row["status"], "finished": row["status"] in RUN_FINISHED,
            "events": [{"id": e["id"], "at": e["at"], "kind": e["kind"], "data": json.loads(e["data_json"])}
                       for e in events]}
