"""The promotion gate under /api/gate, and revocation and rollback: the service functions of
workflow/gatekeeper.py and promotion/, over HTTP, each route naming the permission it needs."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from airlock.access.roles import APPROVES, REVOKES, SETS_POLICIES
from airlock.gateway.auth import actor, permit
from airlock.gateway.deps import AirlockDep, Key, holder_of
from airlock.promotion.approvals import APPROVE, REJECT, approver_from_key
from airlock.promotion.policy import Metric
from airlock.promotion.requests import viewer_from_key

gate_api = APIRouter(prefix="/api")


class PolicyBody(BaseModel):
    """The fields to change; the others keep the current version's values."""

    model_config = ConfigDict(extra="forbid")

    eval_set: str | None = None
    min_exact_match: float | None = Field(None, ge=0.0, le=1.0)
    approvals: int | None = Field(None, ge=0)
    better_than_base: bool | None = None
    better_than_serving: bool | None = None
    metric: Metric | None = None
    margin: float | None = Field(None, ge=0.0, le=1.0)
    signed_approvals: bool | None = None
    admins_may_approve: bool | None = None


@gate_api.put("/gate/policies/{alias}")
def set_policy(alias: str, body: PolicyBody, airlock: AirlockDep, key: Key = Depends(permit(SETS_POLICIES))) -> dict:
    """A new version of the alias's policy; pending requests under the old one are voided."""
    from airlock.promotion.policy import set_policy as set_
    from airlock.serve.deploy import check_alias

    check_alias(alias, airlock.settings)
    return set_(airlock, alias, body.model_dump(exclude_unset=True), actor=actor(key), holder=holder_of(key)).view()


@gate_api.get("/gate/policies/{alias}")
def show_policy(alias: str, airlock: AirlockDep, key: Key = Depends(permit("models:read"))) -> dict:
    from airlock.promotion.policy import require_policy

    return require_policy(airlock, alias).view()


@gate_api.get("/gate/requests")
def list_requests(airlock: AirlockDep, state: str | None = None,
                  key: Key = Depends(permit("models:read"))) -> list[dict]:
    """Requests the key may see: its holder's own, or every one for approvers and admins."""
    from airlock.promotion.requests import list_requests as requests

    return requests(airlock, viewer_from_key(key), state=state)


@gate_api.get("/gate/requests/{request_id}")
def show_request(request_id: str, airlock: AirlockDep, key: Key = Depends(permit("models:read"))) -> dict:
    from airlock.promotion.requests import request_view

    return request_view(airlock, viewer_from_key(key), request_id)


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str = Field("", max_length=4000)
    signature: dict[str, str] | None = None  # {"keyid", "sig"} by a key of the trust root's model role


def _decide(airlock: Any, key: Key, request_id: str, verdict: Literal["approve", "reject"], body: Decision) -> dict:
    from airlock.workflow.gatekeeper import decide_and_promote

    return decide_and_promote(airlock, approver_from_key(key, actor(key)), request_id, verdict, comment=body.comment,
                              signature=body.signature)


@gate_api.post("/gate/requests/{request_id}/approve")
def approve(request_id: str, airlock: AirlockDep, body: Decision | None = None,
            key: Key = Depends(permit(APPROVES))) -> dict:
    """One approval; the one completing the policy's count writes the record and switches the alias."""
    return _decide(airlock, key, request_id, APPROVE, body or Decision())


@gate_api.post("/gate/requests/{request_id}/reject")
def reject(request_id: str, body: Decision, airlock: AirlockDep, key: Key = Depends(permit(APPROVES))) -> dict:
    """One rejection ends the request; `comment` is the reason and is required."""
    return _decide(airlock, key, request_id, REJECT, body)


class Revocation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=4000)


@gate_api.post("/models/{model_id}/revoke")
def revoke(model_id: str, body: Revocation, airlock: AirlockDep, key: Key = Depends(permit(REVOKES))) -> dict:
    from airlock.workflow.gatekeeper import revoke as revoke_

    return revoke_(airlock, model_id, body.reason, actor=actor(key))


@gate_api.post("/aliases/{alias}/rollback")
def rollback(alias: str, airlock: AirlockDep, key: Key = Depends(permit("aliases:write"))) -> dict:
    from airlock.workflow.gatekeeper import rollback as rollback_

    return rollback_(airlock, alias, actor=actor(key))


@gate_api.get("/aliases/{alias}/history")
def history(alias: str, airlock: AirlockDep, key: Key = Depends(permit("models:read"))) -> list[dict]:
    from airlock.workflow.gatekeeper import alias_history

    return alias_history(airlock, alias)


class CanaryBody(BaseModel):
    """A canary rollout (docs/serving.md): the candidate, its share and window, the breach limits."""

    model_config = ConfigDict(extra="forbid")

    candidate: str = Field(min_length=1, max_length=200)
    percent: float = Field(gt=0, lt=100)
    window_s: float = Field(600.0, ge=10, le=7 * 24 * 3600)
    max_error_rate: float = Field(0.01, ge=0, lt=1)
    max_latency_ratio: float = Field(1.5, ge=1)
    min_requests: int = Field(20, ge=1)


@gate_api.post("/aliases/{alias}/canary")
def start_canary(alias: str, body: CanaryBody, airlock: AirlockDep,
                 key: Key = Depends(permit("aliases:write"))) -> dict:
    """Start a canary of a promoted candidate on the alias (admins)."""
    from airlock.serve.canary import start_canary as start

    return start(airlock, alias, body.candidate, percent=body.percent, window_s=body.window_s,
                 max_error_rate=body.max_error_rate, max_latency_ratio=body.max_latency_ratio,
                 min_requests=body.min_requests, actor=actor(key)).as_dict()


@gate_api.get("/aliases/{alias}/canary")
def canary_status(alias: str, airlock: AirlockDep, key: Key = Depends(permit("aliases:read"))) -> dict:
    """The alias's newest canary, with both sides' figures."""
    from airlock.serve.canary import canary_status as status

    return status(airlock, alias).as_dict()


@gate_api.post("/aliases/{alias}/canary/abort")
def abort_canary(alias: str, airlock: AirlockDep, key: Key = Depends(permit("aliases:write"))) -> dict:
    """Stop the alias's canary: the champion keeps every request."""
    from airlock.serve.canary import abort_canary as abort

    return abort(airlock, alias, actor=actor(key)).as_dict()
