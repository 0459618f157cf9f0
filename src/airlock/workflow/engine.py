"""Executing one queued run: stages in order, each recorded with its inputs, outputs and timing.

A batch stage whose cache key (stage type, parameters, and the digests it consumes) matches a
stage that already succeeded is skipped and reuses that stage's outputs.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Callable

from airlock.context import Airlock
from airlock.errors import AirlockError, StageFailed
from airlock.meta.db import now
from airlock.states import RunState, StageState
from airlock.workflow.registry import stage_types
from airlock.workflow.spec import WorkflowSpec
from airlock.workflow.stage import StageContext
from airlock.workflow.training import RunStopped


def cache_key(uses: str, params: dict, inputs: dict) -> str:
    blob = json.dumps({"uses": uses, "params": params, "inputs": inputs}, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def _set_stage(airlock: Airlock, run_id: str, name: str, **fields) -> None:
    with airlock.meta.write() as db:
        db["stages"].update((run_id, name), fields)


def _set_run(airlock: Airlock, run_id: str, **fields) -> None:
    with airlock.meta.write() as db:
        db["runs"].update(run_id, fields)


def _cached_outputs(airlock: Airlock, uses: str, key: str) -> dict | None:
    row = airlock.meta.one(
        "SELECT outputs_json FROM stages WHERE uses = ? AND cache_key = ? AND status = 'succeeded' "
        "ORDER BY finished_at DESC LIMIT 1", (uses, key))
    if row is None:
        return None
    outputs = json.loads(row["outputs_json"])
    # Reuse only what is still in the store: a cleaned store means the stage runs again.
    digests = [v for v in outputs.values() if isinstance(v, str) and v.startswith("sha256:")]
    return outputs if all(airlock.store.exists(d) for d in digests) else None


class RunControl:
    """Why the run should stop now, asked at stage boundaries and by training at every step:
    a cancel or preemption requested in the database, its time limit, or the worker stopping."""

    def __init__(self, airlock: Airlock, run_id: str, shutdown: Callable[[], bool]) -> None:
        self.airlock, self.run_id, self.shutdown = airlock, run_id, shutdown
        self.started = time.monotonic()
        row = airlock.meta.one("SELECT time_limit_s, ran_s FROM runs WHERE id = ?", (run_id,))
        self.limit, self.ran_before = row["time_limit_s"], row["ran_s"] or 0.0

    def ran_s(self) -> float:
        return self.ran_before + time.monotonic() - self.started

    def __call__(self) -> str | None:
        if self.shutdown():
            return "shutdown"
        row = self.airlock.meta.one("SELECT control FROM runs WHERE id = ?", (self.run_id,))
        if row["control"]:
            return row["control"]
        if self.limit and self.ran_s() > self.limit:
            return "time-limit"
        return None


def execute_run(airlock: Airlock, run_id: str, *, claim: dict | None = None,
                shutdown: Callable[[], bool] = lambda: False) -> RunState:
    """Run the stages of `run_id` not yet succeeded; returns the run's status afterwards:
    succeeded, failed, cancelled, or queued (preempted, or the worker stopping)."""
    run = airlock.meta.one("SELECT * FROM runs WHERE id = ?", (run_id,))
    resolved = json.loads(run["spec_json"])
    spec = WorkflowSpec.model_validate(resolved["spec"])
    datasets = resolved["datasets"]
    types = stage_types()
    outputs: dict[str, dict] = {}
    control = RunControl(airlock, run_id, shutdown)
    _set_run(airlock, run_id, status=RunState.RUNNING, started_at=run["started_at"] or now())
    stages = airlock.meta.query("SELECT name, status, outputs_json FROM stages WHERE run_id = ? ORDER BY position",
                                (run_id,))

    for row in stages:
        if row["status"] == StageState.SUCCEEDED:  # a resumed run keeps what it already did
            outputs[row["name"]] = json.loads(row["outputs_json"])
            continue
        if (reason := control()) and reason != "preempt":  # preemption is for training, mid-stage
            return _stopped(airlock, run_id, stages, row["name"], RunStopped(reason, None), control)
        stage = spec.stage(row["name"])
        stage_type = types[stage.uses]
        params = stage_type.params.model_validate(stage.with_)
        stage_datasets = {p: datasets[f"{stage.name}.{p}"] for p in stage_type.dataset_params if f"{stage.name}.{p}" in datasets}
        upstream = {n: outputs[n] for n in stage.needs}
        inputs = {"base_model": resolved["base_model"]["digest"], "dataset": datasets["dataset"],
                  "datasets": stage_datasets, "upstream": upstream}
        key = cache_key(stage.uses, params.model_dump(), inputs)
        _set_stage(airlock, run_id, stage.name, status=StageState.RUNNING, started_at=now(), cache_key=key,
                   inputs_json=json.dumps(inputs, default=str))

        if stage_type.batch and (cached := _cached_outputs(airlock, stage.uses, key)) is not None:
            outputs[stage.name] = cached
            _set_stage(airlock, run_id, stage.name, status=StageState.SUCCEEDED, skipped=1, finished_at=now(),
                       outputs_json=json.dumps(cached))
            continue

        ctx = StageContext(airlock=airlock, run_id=run_id, stage=stage.name, params=params,
                           base_model=resolved["base_model"], dataset={"digest": datasets["dataset"]},
                           upstream=upstream, datasets=stage_datasets, claim=claim, should_stop=control)
        try:
            outputs[stage.name] = stage_type.run(ctx)
        except RunStopped as stop:
            return _stopped(airlock, run_id, stages, stage.name, stop, control)
        except Exception as exc:  # noqa: BLE001 - any failure stops the run and is recorded
            reason = str(exc) if isinstance(exc, AirlockError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, AirlockError):
                reason += "\n" + traceback.format_exc(limit=5)
            _set_stage(airlock, run_id, stage.name, status=StageState.FAILED, error=reason, finished_at=now())
            _set_run(airlock, run_id, status=RunState.FAILED, finished_at=now(), control=None, ran_s=control.ran_s(),
                     error=f"stage {stage.name!r} ({stage.uses}) failed: {reason.splitlines()[0]}")
            _not_run_after(airlock, run_id, stages, stage.name)
            airlock.meta.audit("worker", "run.failed", run_id, stage=stage.name)
            return RunState.FAILED
        _set_stage(airlock, run_id, stage.name, status=StageState.SUCCEEDED, finished_at=now(),
                   outputs_json=json.dumps(outputs[stage.name], default=str))

    _set_run(airlock, run_id, status=RunState.SUCCEEDED, finished_at=now(), control=None, ran_s=control.ran_s())
    airlock.meta.audit("worker", "run.succeeded", run_id)
    return RunState.SUCCEEDED


def _not_run_after(airlock: Airlock, run_id: str, stages: list[dict], name: str) -> None:
    names = [s["name"] for s in stages]
    for later in names[names.index(name) + 1:]:
        _set_stage(airlock, run_id, later, status=StageState.NOT_RUN)


def _stopped(airlock: Airlock, run_id: str, stages: list[dict], name: str, stop: RunStopped,
             control: RunControl) -> RunState:
    """Record a run stopped on request: cancelled, failed (its time limit), or back in the queue."""
    at = f" at step {stop.step} (its checkpoint is kept)" if stop.step is not None else ""
    if stop.reason in ("preempt", "shutdown"):
        why = ("preempted by a higher-priority run" if stop.reason == "preempt" else "the worker stopped") + at
        _set_stage(airlock, run_id, name, status=StageState.PENDING)
        _set_run(airlock, run_id, status=RunState.QUEUED, worker_id=None, control=None, ran_s=control.ran_s(),
                 notice=f"{why}; it resumes when it is next started")
        airlock.meta.audit("worker", "run.preempted" if stop.reason == "preempt" else "run.requeued", run_id,
                           stage=name, step=stop.step)
        return RunState.QUEUED
    if stop.reason == "time-limit":
        error = (f"the run's time limit of {control.limit:g} s was reached{at}; "
                 f"`airlock runs resume {run_id} --time-limit ...` continues it")
        status, stage_status, action = RunState.FAILED, StageState.FAILED, "run.failed"
    else:
        error = f"cancelled{at}; `airlock runs resume {run_id}` continues it"
        status, stage_status, action = RunState.CANCELLED, StageState.CANCELLED, "run.cancelled"
    if stop.step is None:
        stage_status = StageState.NOT_RUN
    _set_stage(airlock, run_id, name, status=stage_status, error=error, finished_at=now())
    _set_run(airlock, run_id, status=status, finished_at=now(), control=None, ran_s=control.ran_s(), error=error)
    _not_run_after(airlock, run_id, stages, name)
    airlock.meta.audit("worker", action, run_id, stage=name, step=stop.step, reason=stop.reason)
    return status


def stage_failure(run: dict) -> StageFailed:
    return StageFailed(run["error"] or f"run {run['id']} failed")
