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


def get_run(airlock: Airlock, run_id: str) -> dict:
    run = airlock.meta.one("SELECT id, workflow, status, error, created_at, started_at, finished_at FROM runs WHERE id = ?",
                           (run_id,))
    if run is None:
        raise NotFound(f"no run {run_id!r}; `airlock workflow list` shows the runs")
    stages = airlock.meta.query(
        "SELECT name, uses, status, skipped, error, started_at, finished_at, inputs_json, outputs_json, progress_json "
        "FROM stages WHERE run_id = ? ORDER BY position", (run_id,))
    run["stages"] = [_decode(s) for s in stages]
    for stage in run["stages"]:
        stage["skipped"] = bool(stage["skipped"])
    return run


def list_runs(airlock: Airlock, limit: int = 50) -> list[dict]:
    return airlock.meta.query(
        "SELECT id, workflow, status, created_at, finished_at, error FROM runs ORDER BY created_at DESC LIMIT ?",
        (limit,))


def stage_metrics(airlock: Airlock, run_id: str, stage: str, name: str = "loss") -> list[dict]:
    return airlock.meta.query(
        "SELECT step, value FROM stage_metrics WHERE run_id = ? AND stage = ? AND name = ? ORDER BY step",
        (run_id, stage, name))
