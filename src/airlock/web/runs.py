"""The runs pages: the queue (owner, priority, state, position, and the changes the role may make),
one run (its stages with timings, live charts fed by the run's server-sent events, its checkpoints,
a failure in plain words), and a comparison of several runs (curves overlaid, settings side by side).
What a key may see and change is what /api lets it: the same `caller_of` (gateway/deps.py) and `run_view`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from airlock.access.roles import may
from airlock.errors import AirlockError
from airlock.gateway.deps import AirlockDep, Key, caller_of
from airlock.gateway.redact import run_view
from airlock.states import RUN_FINISHED, RUN_RESUMABLE, RunState
from airlock.web.pages import page, render

router = APIRouter(include_in_schema=False)

# The page offers cancel and a priority change for a run in these states (a claimed run is
# about to be running: its buttons appear on the next load).
CHANGEABLE = frozenset({RunState.QUEUED, RunState.RUNNING})
CURVES = ("loss", "eval_loss", "learning_rate", "tokens_per_second")


def _seconds(started: str | None, finished: str | None) -> float | None:
    if not started:
        return None
    end = datetime.fromisoformat(finished) if finished else datetime.now(datetime.fromisoformat(started).tzinfo)
    return round((end - datetime.fromisoformat(started)).total_seconds(), 1)


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request, airlock: AirlockDep, key: Key = Depends(page("runs:read"))) -> HTMLResponse:
    from airlock.workflow.queue import list_queue

    caller = caller_of(key)
    runs = [run_view(r, key) for r in list_queue(airlock, caller, limit=200)]
    for run in runs:
        run["manageable"] = caller.may_change(run["owner"])
    return render(request, "runs.html", key, runs=runs, changeable=CHANGEABLE, resumable=RUN_RESUMABLE,
                  can_launch=may(key, "runs:write"))


@router.get("/runs/compare", response_class=HTMLResponse)
def compare_page(request: Request, airlock: AirlockDep, ids: list[str] = Query(default=[]),
                 key: Key = Depends(page("runs:read"))) -> HTMLResponse:
    from airlock.workflow.queue import show_run
    from airlock.workflow.submit import queued_spec

    caller = caller_of(key)
    chosen = [i for part in ids for i in part.split(",") if i.strip()]
    if len(chosen) < 2:
        return render(request, "error.html", key, status=400,
                      error="choose two or more runs to compare (the checkboxes on the runs page)")
    try:
        runs = [run_view({**show_run(airlock, caller, i), **queued_spec(airlock, i)}, key) for i in chosen]
    except AirlockError as exc:
        return render(request, "error.html", key, status=exc.http_status, error=exc.message)
    settings = [_settings_of(r) for r in runs]
    names = sorted({name for s in settings for name in s})
    rows = [(name, [s.get(name, "") for s in settings]) for name in names]
    curves = {r["id"]: _curves(airlock, r) for r in runs}
    return render(request, "compare.html", key, runs=runs, rows=rows, curves=json.dumps(curves))


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(run_id: str, request: Request, airlock: AirlockDep,
             key: Key = Depends(page("runs:read"))) -> HTMLResponse:
    from airlock.workflow.queue import show_run
    from airlock.workflow.submit import queued_spec

    caller = caller_of(key)
    try:
        run = run_view({**show_run(airlock, caller, run_id), **queued_spec(airlock, run_id)}, key)
    except AirlockError as exc:
        return render(request, "error.html", key, status=exc.http_status, error=exc.message)
    for stage in run["stages"]:
        stage["seconds"] = _seconds(stage["started_at"], stage["finished_at"])
    training = next((s["name"] for s in run["stages"] if s["uses"].startswith("finetune.")), None)
    return render(request, "run.html", key, run=run, training=training, manageable=caller.may_change(run["owner"]),
                  changeable=CHANGEABLE, resumable=RUN_RESUMABLE, finished=RUN_FINISHED)


def _settings_of(run: dict[str, Any]) -> dict[str, str]:
    """A run's settings flattened for a side-by-side table: its base model, datasets, priority and
    every stage parameter as `stage.parameter`."""
    queued = run.get("spec") or {}
    out = {"base model": str((queued.get("base_model") or {}).get("name", "")), "priority": str(run["priority"])}
    for name, digest in (queued.get("datasets") or {}).items():
        out[f"dataset {name}"] = str(digest)
    for stage in (queued.get("spec") or {}).get("stages") or []:
        for param, value in (stage.get("with") or {}).items():
            out[f"{stage.get('name')}.{param}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def _curves(airlock, run: dict[str, Any]) -> dict[str, list]:
    """Each recorded curve of the run's training stage: {name: [[step, value], ...]}."""
    from airlock.workflow.runs import stage_metrics

    stage = next((s["name"] for s in run["stages"] if s["uses"].startswith("finetune.")), None)
    if stage is None:
        return {}
    return {name: [[m["step"], m["value"]] for m in stage_metrics(airlock, run["id"], stage, name)] for name in CURVES}
