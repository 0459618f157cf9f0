"""Reading run state: what the CLI's `workflow status/list` and the HTTP API both show."""

from __future__ import annotations

import json
from typing import Any, TypedDict

from airlock.context import Airlock
from airlock.errors import NotFound
from airlock.states import RunState, StageState, placeholders


class RunRow(TypedDict):
    """A run as `list_runs` reads it: what the run lists show."""

    id: str
    workflow: str
    status: RunState
    priority: int
    owner: str | None  # who submitted it (`submitted_by`): `operator` or a key's holder
    attempts: int
    notice: str | None  # why it waits or went back to the queue
    time_limit_s: float | None
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None


class StageRow(TypedDict):
    """One stage of a run as `get_run` reads it, its JSON columns decoded."""

    name: str
    uses: str
    status: StageState
    skipped: bool  # its cached outputs were reused
    error: str | None
    started_at: str | None
    finished_at: str | None
    inputs: dict[str, Any] | None
    outputs: dict[str, Any] | None
    progress: dict[str, Any] | None


class RunDetail(RunRow):
    """A run with what it claimed or asked for and its stages in order (`get_run`)."""

    resources: dict[str, Any] | None
    stages: list[StageRow]


RUN_FIELDS = ("id, workflow, status, priority, submitted_by AS owner, attempts, notice, time_limit_s, "
              "error, created_at, started_at, finished_at")


def _run_row(row: dict[str, Any]) -> RunRow:
    return RunRow(**{**row, "status": RunState(row["status"])})


def _stage_row(row: dict[str, Any]) -> StageRow:
    decoded = {key.removesuffix("_json"): json.loads(row[key] or "null")
               for key in ("inputs_json", "outputs_json", "progress_json")}
    return StageRow(name=row["name"], uses=row["uses"], status=StageState(row["status"]), skipped=bool(row["skipped"]),
                    error=row["error"], started_at=row["started_at"], finished_at=row["finished_at"], **decoded)


def get_run(airlock: Airlock, run_id: str) -> RunDetail:
    run = airlock.meta.one(f"SELECT {RUN_FIELDS}, resources_json FROM runs WHERE id = ?", (run_id,))
    if run is None:
        raise NotFound(f"no run {run_id!r}; `airlock workflow list` shows the runs")
    stages = airlock.meta.query(
        "SELECT name, uses, status, skipped, error, started_at, finished_at, inputs_json, outputs_json, progress_json "
        "FROM stages WHERE run_id = ? ORDER BY position", (run_id,))
    resources = json.loads(run.pop("resources_json") or "null")
    return RunDetail(**_run_row(run), resources=resources, stages=[_stage_row(s) for s in stages])


def list_runs(airlock: Airlock, limit: int = 50, *, owner: str | None = None,
              states: list[str] | None = None) -> list[RunRow]:
    """Newest first; only `owner`'s runs and only runs in `states` when given."""
    where, params = [], []
    if owner is not None:
        where.append("submitted_by = ?")
        params.append(owner)
    if states:
        where.append(f"status IN ({placeholders(states)})")
        params += states
    sql = f"SELECT {RUN_FIELDS} FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "")
    return [_run_row(r) for r in airlock.meta.query(sql + " ORDER BY created_at DESC LIMIT ?", (*params, limit))]


def stage_metrics(airlock: Airlock, run_id: str, stage: str, name: str = "loss") -> list[dict]:
    return airlock.meta.query(
        "SELECT step, value FROM stage_metrics WHERE run_id = ? AND stage = ? AND name = ? ORDER BY step",
        (run_id, stage, name))
