"""Reading run state: what the CLI's `workflow status/list` and the HTTP API both show."""

from __future__ import annotations

import json

from airlock.context import Airlock
from airlock.errors import NotFound

FINISHED = ("succeeded", "failed", "cancelled", "interrupted")


def _decode(row: dict) -> dict:
    for key in ("inputs_json", "outputs_json", "progress_json"):
        if key in row:
            row[key.removesuffix("_json")] = json.loads(row.pop(key) or "null")
    return row


RUN_FIELDS = ("id, workflow, status, priority, submitted_by AS owner, attempts, notice, time_limit_s, "
              "error, created_at, started_at, finished_at")


def get_run(airlock: Airlock, run_id: str) -> dict:
    run = airlock.meta.one(f"SELECT {RUN_FIELDS}, resources_json FROM runs WHERE id = ?", (run_id,))
    if run is None:
        raise NotFound(f"no run {run_id!r}; `airlock workflow list` shows the runs")
    stages = airlock.meta.query(
        "SELECT name, uses, status, skipped, error, started_at, finished_at, inputs_json, outputs_json, progress_json "
        "FROM stages WHERE run_id = ? ORDER BY position", (run_id,))
    run["resources"] = json.loads(run.pop("resources_json") or "null")
    run["stages"] = [_decode(s) for s in stages]
    for stage in run["stages"]:
        stage["skipped"] = bool(stage["skipped"])
    return run


def list_runs(airlock: Airlock, limit: int = 50, *, owner: str | None = None,
              states: list[str] | None = None) -> list[dict]:
    """Newest first; only `owner`'s runs and only runs in `states` when given."""
    where, params = [], []
    if owner is not None:
        where.append("submitted_by = ?")
        params.append(owner)
    if states:
        where.append(f"status IN ({', '.join('?' for _ in states)})")
        params += states
    sql = f"SELECT {RUN_FIELDS} FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "")
    return airlock.meta.query(sql + " ORDER BY created_at DESC LIMIT ?", (*params, limit))


def stage_metrics(airlock: Airlock, run_id: str, stage: str, name: str = "loss") -> list[dict]:
    return airlock.meta.query(
        "SELECT step, value FROM stage_metrics WHERE run_id = ? AND stage = ? AND name = ? ORDER BY step",
        (run_id, stage, name))
