"""The control API under /api: the same service functions the CLI calls, over HTTP.

Routes are plain `def`, so FastAPI runs them in its thread pool and a slow verification never
blocks the event loop that proxies inference traffic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from airlock.context import Airlock
from airlock.gateway.app_keys import require_key

api = APIRouter(prefix="/api", dependencies=[Depends(require_key)])


def _airlock(request: Request) -> Airlock:
    state = request.app.state
    if getattr(state, "airlock", None) is None:
        state.airlock = Airlock.open(state.settings)
    return state.airlock


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    set: list[str] = []


@api.post("/runs", status_code=202)
def submit_run(body: RunRequest, request: Request) -> dict[str, Any]:
    """Check and queue a workflow file that lies on the appliance host."""
    from airlock.workflow.submit import submit

    return submit(_airlock(request), Path(body.file), body.set)


@api.get("/runs")
def list_runs(request: Request, limit: int = 50) -> list[dict[str, Any]]:
    from airlock.workflow.runs import list_runs as runs

    return runs(_airlock(request), limit)


@api.get("/runs/{run_id}")
def get_run(run_id: str, request: Request) -> dict[str, Any]:
    from airlock.workflow.runs import get_run as run

    return run(_airlock(request), run_id)


@api.get("/models")
def list_models(request: Request) -> list[dict[str, Any]]:
    from airlock.models.adapters import list_models as models

    return models(_airlock(request))


@api.post("/models/{model_id}/verify")
def verify_model(model_id: str, request: Request) -> dict[str, Any]:
    from airlock.models.signing import verify_model as verify

    manifest = verify(_airlock(request), model_id)
    return {"model_id": model_id, "verified": True, "files": len(manifest["files"])}


@api.get("/aliases")
def list_aliases(request: Request) -> list[dict[str, Any]]:
    from airlock.serve.deploy import list_aliases as aliases

    return aliases(_airlock(request))
