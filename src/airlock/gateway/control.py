"""The control API under /api: the same service functions the CLI calls, over HTTP.

Every route names the permission it needs (`permit`), and every change is recorded with the
calling key as its actor. Nothing here names a path on the host: specs travel in the body,
datasets are uploaded and then named by name or digest.

Routes are plain `def` where they touch SQLite or the store, so FastAPI runs them in its thread
pool and a slow verification never blocks the event loop that proxies inference traffic.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from airlock.access.roles import DEFAULT_ROLE
from airlock.context import Airlock
from airlock.datasets.service import Reader
from airlock.gateway.auth import actor, permit
from airlock.gateway.deps import AirlockDep, CallerDep, Key, ReaderDep, holder_of
from airlock.gateway.redact import redacted_errors, run_view
from airlock.gateway.uploads import check_jsonl_type, received, upload_slot

api = APIRouter(prefix="/api")


# Datasets ---------------------------------------------------------------------------------------


@api.post("/datasets", status_code=201)
async def upload_dataset(request: Request, name: str, airlock: AirlockDep,
                         key: Key = Depends(permit("datasets:write"))) -> dict:
    """Add the JSONL file sent as the raw body under `name`, in the caller's holder's namespace;
    a 400 lists every bad line."""
    from airlock.datasets.service import add_dataset_upload

    check_jsonl_type(request.headers.get("content-type"))
    settings = request.app.state.settings
    async with upload_slot(request, key["id"]), \
            received(request, limit=settings.max_upload_bytes, folder=settings.home / "uploads") as path:
        return await run_in_threadpool(lambda: add_dataset_upload(
            airlock, path, name=name, owner=holder_of(key), actor=actor(key),
            max_record_bytes=settings.max_record_bytes))


@api.get("/datasets")
def list_datasets(airlock: AirlockDep, reader: ReaderDep, owner: str | None = None,
                  key: Key = Depends(permit("datasets:read"))) -> list[dict]:
    """The datasets this key may read (of one `owner`, if given), newest first."""
    from airlock.datasets.service import list_datasets as datasets

    return datasets(airlock, reader=reader, owner=owner)


class ShareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str
    holders: list[str] = []
    keys: list[str] = []
    all_trainers: bool = False


def _share(airlock: Airlock, body: ShareRequest, reader: Reader, key: Key, change) -> dict:
    from airlock.datasets.sharing import grantees

    with_ = grantees(airlock, body.holders, body.keys, body.all_trainers)
    return change(airlock, body.dataset, with_, reader=reader, actor=actor(key))


@api.post("/datasets/share")
def share_dataset(body: ShareRequest, airlock: AirlockDep, reader: ReaderDep,
                  key: Key = Depends(permit("datasets:share"))) -> dict:
    """Let holders, the holders of keys, or every trainer read a dataset (@OWNER/NAME or digest)."""
    from airlock.datasets.sharing import share_dataset as share

    return _share(airlock, body, reader, key, share)


@api.post("/datasets/unshare")
def unshare_dataset(body: ShareRequest, airlock: AirlockDep, reader: ReaderDep,
                    key: Key = Depends(permit("datasets:share"))) -> dict:
    """Take back a share; runs already queued keep the digest they recorded."""
    from airlock.datasets.sharing import unshare_dataset as unshare

    return _share(airlock, body, reader, key, unshare)


@api.get("/datasets/{name_or_digest:path}")
def get_dataset(name_or_digest: str, airlock: AirlockDep, reader: ReaderDep,
                key: Key = Depends(permit("datasets:read"))) -> dict:
    """A dataset by name (the caller's own), @OWNER/NAME or digest; 404 for one the key may not read."""
    from airlock.datasets.service import get_dataset as dataset

    return dataset(airlock, name_or_digest, reader=reader)


# Runs -------------------------------------------------------------------------------------------


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: dict[str, Any]
    set: list[str] = []


@api.post("/runs", status_code=202)
def submit_run(body: RunRequest, airlock: AirlockDep, caller: CallerDep, reader: ReaderDep,
               key: Key = Depends(permit("runs:write"))) -> dict:
    """Check a workflow given in the body completely and queue it; a 400 lists every problem."""
    from airlock.workflow.submit import submit_request

    with redacted_errors(key):
        return submit_request(airlock, body.spec, body.set, actor=caller.actor, reader=reader,
                              max_priority=caller.max_priority)


@api.get("/runs")
def list_runs(airlock: AirlockDep, caller: CallerDep, limit: int = 50, state: Annotated[list[str] | None, Query()] = None,
              key: Key = Depends(permit("runs:read"))) -> list[dict]:
    """The runs this key may see, newest first, with owner, priority and queue position."""
    from airlock.workflow.queue import list_queue

    return [run_view(r, key) for r in list_queue(airlock, caller, states=state, limit=limit)]


@api.get("/runs/{run_id}")
def get_run(run_id: str, airlock: AirlockDep, caller: CallerDep, key: Key = Depends(permit("runs:read"))) -> dict:
    from airlock.workflow.queue import show_run
    from airlock.workflow.submit import queued_spec

    return run_view({**show_run(airlock, caller, run_id), **queued_spec(airlock, run_id)}, key)


@api.post("/runs/{run_id}/cancel")
def cancel_run(run_id: str, airlock: AirlockDep, caller: CallerDep, key: Key = Depends(permit("runs:write"))) -> dict:
    """Cancel: a queued run at once, a running one at its next step after a checkpoint; 409 if finished."""
    from airlock.workflow.queue import cancel_run as cancel

    return cancel(airlock, caller, run_id)


class PriorityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: str | int


@api.put("/runs/{run_id}/priority")
def set_priority(run_id: str, body: PriorityRequest, airlock: AirlockDep, caller: CallerDep,
                 key: Key = Depends(permit("runs:write"))) -> dict:
    from airlock.workflow.queue import set_priority as reprioritise

    return reprioritise(airlock, caller, run_id, body.priority)


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time_limit: str | None = None


@api.post("/runs/{run_id}/resume")
def resume_run(run_id: str, airlock: AirlockDep, caller: CallerDep, body: ResumeRequest | None = None,
               key: Key = Depends(permit("runs:write"))) -> dict:
    """Queue a cancelled, failed or interrupted run again, to continue from its last checkpoint."""
    from airlock.workflow.queue import resume_run as resume

    return resume(airlock, caller, run_id, time_limit=(body or ResumeRequest()).time_limit)


# Keys -------------------------------------------------------------------------------------------


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    role: str = DEFAULT_ROLE
    models: list[str] | None = None
    expires: str | None = None
    rpm: int = 0
    tpm: int = 0
    max_tokens: int = 0
    holder: str | None = None


@api.post("/keys", status_code=201)
def create_key(body: KeyRequest, airlock: AirlockDep, key: Key = Depends(permit("keys:admin"))) -> dict:
    """Make a key; the answer holds its secret, which is never shown again."""
    from airlock.access.keys import create_key as create, get_key

    meta = airlock.meta
    key_id, secret = create(meta, body.name, role=body.role, models=body.models, expires=body.expires,
                            rpm=body.rpm, tpm=body.tpm, max_tokens=body.max_tokens, actor=actor(key),
                            holder=body.holder)
    return {**get_key(meta, key_id), "key": secret}


@api.get("/keys")
def list_keys(airlock: AirlockDep, key: Key = Depends(permit("keys:admin"))) -> list[dict]:
    from airlock.access.keys import list_keys as keys

    return keys(airlock.meta)


@api.delete("/keys/{key_id}")
def revoke_key(key_id: str, airlock: AirlockDep, key: Key = Depends(permit("keys:admin"))) -> dict:
    from airlock.access.keys import revoke_key as revoke

    return revoke(airlock.meta, key_id, actor=actor(key))


# Aliases and models -----------------------------------------------------------------------------


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str


@api.put("/aliases/{alias}")
def switch_alias(alias: str, body: AliasRequest, airlock: AirlockDep,
                 key: Key = Depends(permit("aliases:write"))) -> dict:
    """Serve a promoted model under `alias`: verified, loaded and smoke-tested before the switch."""
    from airlock.serve.deploy import deploy

    return deploy(airlock, body.model_id, alias, actor=actor(key))


@api.get("/aliases")
def list_aliases(airlock: AirlockDep, key: Key = Depends(permit("aliases:read"))) -> list[dict]:
    from airlock.serve.deploy import list_aliases as aliases

    return aliases(airlock)


@api.get("/models")
def list_models(airlock: AirlockDep, key: Key = Depends(permit("models:read"))) -> list[dict]:
    from airlock.models.adapters import list_models as models

    return models(airlock)


@api.post("/models/{model_id}/verify")
def verify_model(model_id: str, airlock: AirlockDep, key: Key = Depends(permit("models:verify"))) -> dict:
    from airlock.promotion.signing import verify_model as verify

    manifest = verify(airlock, model_id)
    return {"model_id": model_id, "verified": True, "files": len(manifest["files"])}
