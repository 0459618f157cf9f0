"""Executing one queued run: stages in order, each recorded with its inputs, outputs and timing.

A batch stage whose cache key (stage type, parameters, and the digests it consumes) matches a
stage that already succeeded is skipped and reuses that stage's outputs.
"""

from __future__ import annotations

import hashlib
import json
import traceback

from airlock.context import Airlock
from airlock.errors import AirlockError, StageFailed
from airlock.meta.db import now
from airlock.workflow.registry import stage_types
from airlock.workflow.spec import WorkflowSpec
from airlock.workflow.stage import StageContext


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


def execute_run(airlock: Airlock, run_id: str) -> str:
    """Run every stage of `run_id`; returns the final status ('succeeded' or 'failed')."""
    run = airlock.meta.one("SELECT * FROM runs WHERE id = ?", (run_id,))
    resolved = json.loads(run["spec_json"])
    spec = WorkflowSpec.model_validate(resolved["spec"])
    datasets = resolved["datasets"]
    types = stage_types()
    outputs: dict[str, dict] = {}
    _set_run(airlock, run_id, status="running", started_at=now())
    stages = airlock.meta.query("SELECT name FROM stages WHERE run_id = ? ORDER BY position", (run_id,))

    for row in stages:
        stage = spec.stage(row["name"])
        stage_type = types[stage.uses]
        params = stage_type.params.model_validate(stage.with_)
        stage_datasets = {p: datasets[f"{stage.name}.{p}"] for p in stage_type.dataset_params if f"{stage.name}.{p}" in datasets}
        upstream = {n: outputs[n] for n in stage.needs}
        inputs = {"base_model": resolved["base_model"]["digest"], "dataset": datasets["dataset"],
                  "datasets": stage_datasets, "upstream": upstream}
        key = cache_key(stage.uses, params.model_dump(), inputs)
        _set_stage(airlock, run_id, stage.name, status="running", started_at=now(), cache_key=key,
                   inputs_json=json.dumps(inputs, default=str))

        if stage_type.batch and (cached := _cached_outputs(airlock, stage.uses, key)) is not None:
            outputs[stage.name] = cached
            _set_stage(airlock, run_id, stage.name, status="succeeded", skipped=1, finished_at=now(),
                       outputs_json=json.dumps(cached))
            continue

        ctx = StageContext(airlock=airlock, run_id=run_id, stage=stage.name, params=params,
                           base_model=resolved["base_model"], dataset={"digest": datasets["dataset"]},
                           upstream=upstream, datasets=stage_datasets)
        try:
            outputs[stage.name] = stage_type.run(ctx)
        except Exception as exc:  # noqa: BLE001 - any failure stops the run and is recorded
            reason = str(exc) if isinstance(exc, AirlockError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, AirlockError):
                reason += "\n" + traceback.format_exc(limit=5)
            _set_stage(airlock, run_id, stage.name, status="failed", error=reason, finished_at=now())
            _set_run(airlock, run_id, status="failed", finished_at=now(),
                     error=f"stage {stage.name!r} ({stage.uses}) failed: {reason.splitlines()[0]}")
            for later in stages[stages.index(row) + 1:]:
                _set_stage(airlock, run_id, later["name"], status="not-run")
            airlock.meta.audit("worker", "run.failed", run_id, stage=stage.name)
            return "failed"
        _set_stage(airlock, run_id, stage.name, status="succeeded", finished_at=now(),
                   outputs_json=json.dumps(outputs[stage.name], default=str))

    _set_run(airlock, run_id, status="succeeded", finished_at=now())
    airlock.meta.audit("worker", "run.succeeded", run_id)
    return "succeeded"


def stage_failure(run: dict) -> StageFailed:
    return StageFailed(run["error"] or f"run {run['id']} failed")
