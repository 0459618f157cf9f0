"""The promotion gate's pages: each alias's policy (set by admins, read by every key that reads
models) and the promotion requests with their approvals.

The forms post to these pages with the session's CSRF token and call the very service functions
/api/gate calls (`set_policy`, `decide_and_promote`), so a refusal reads the same wherever it is
made: the author deciding on its own candidate, a second key of one person, a policy's bad field.
Who sees what is the service's too: `viewer_from_key` gives authors their own requests with the
totals only, and reviewers every request with each example's answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from airlock.access.roles import APPROVES, SETS_POLICIES, may
from airlock.errors import AirlockError
from airlock.gateway.auth import actor
from airlock.gateway.deps import AirlockDep, Key, holder_of
from airlock.promotion.policy import Policy, PolicyRow
from airlock.web.pages import page, posted_form, render

router = APIRouter(include_in_schema=False)

NUMBERS = ("min_exact_match", "approvals", "margin")  # validated by the Policy model, with the field named
FLAGS = ("better_than_serving", "better_than_base", "signed_approvals", "admins_may_approve")
METRICS = ("exact_match", "contains", "loss")


# Policies ----------------------------------------------------------------------------------------


def _policies(airlock) -> list[PolicyRow]:
    from airlock.promotion.policy import policy_for

    names = [r["alias"] for r in airlock.meta.query("SELECT DISTINCT alias FROM gate_policies ORDER BY alias")]
    return [row for name in names if (row := policy_for(airlock, name)) is not None]


@router.get("/gate/policies", response_class=HTMLResponse)
def policies_page(request: Request, airlock: AirlockDep, alias: str = "",
                  key: Key = Depends(page("models:read"))) -> Response:
    from urllib.parse import quote

    from airlock.serve.deploy import list_aliases

    if alias.strip():  # the form that opens an alias's policy, new or not
        return RedirectResponse(f"/gate/policies/{quote(alias.strip(), safe='')}", status_code=303)

    policies = _policies(airlock)
    governed = {p.alias for p in policies}
    unguarded = [a["name"] for a in list_aliases(airlock) if a["name"] not in governed]
    return render(request, "gate_policies.html", key, policies=policies, unguarded=unguarded,
                  can_set=may(key, SETS_POLICIES))


def _policy_page(request: Request, airlock, key: Key, alias: str, status: int = 200, error: str | None = None,
                 problems: list[str] | None = None, shown: dict | None = None) -> HTMLResponse:
    from airlock.promotion.policy import policy_for
    from airlock.serve.deploy import check_alias

    try:
        check_alias(alias, airlock.settings)
    except AirlockError as exc:
        return render(request, "error.html", key, status=exc.http_status, error=exc.message)
    current = policy_for(airlock, alias)
    versions = airlock.meta.query("SELECT version, digest, set_by, set_at FROM gate_policies WHERE alias = ? "
                                  "ORDER BY version DESC", (alias,))
    form = shown or (current.policy.model_dump() if current else Policy().model_dump())
    return render(request, "gate_policy.html", key, status=status, alias=alias, current=current, versions=versions,
                  form=form, metrics=METRICS, can_set=may(key, SETS_POLICIES), error=error, problems=problems or [])


@router.get("/gate/policies/{alias}", response_class=HTMLResponse)
def policy_page(alias: str, request: Request, airlock: AirlockDep,
                key: Key = Depends(page("models:read"))) -> HTMLResponse:
    return _policy_page(request, airlock, key, alias)


def policy_fields(form: dict[str, str], current: PolicyRow | None) -> dict[str, Any]:
    """The policy fields a form sets: numbers as typed (the Policy model names a bad one), an
    unticked box as false, and the eval set only where it changed (a changed one is pinned again)."""
    fields: dict[str, Any] = {name: form.get(name, "").strip() for name in NUMBERS}
    fields.update({name: name in form for name in FLAGS})
    fields["metric"] = form.get("metric", "exact_match")
    eval_set = form.get("eval_set", "").strip()
    if eval_set != ((current.policy.eval_set if current else None) or ""):
        fields["eval_set"] = eval_set or None
    return fields


@router.post("/gate/policies/{alias}", response_class=HTMLResponse)
def set_policy_form(alias: str, request: Request, airlock: AirlockDep, key: Key = Depends(page(SETS_POLICIES)),
                    form: dict = Depends(posted_form)) -> Response:
    from airlock.promotion.policy import policy_for, set_policy
    from airlock.serve.deploy import check_alias

    try:
        check_alias(alias, airlock.settings)
        set_policy(airlock, alias, policy_fields(form, policy_for(airlock, alias)), actor=actor(key),
                   holder=holder_of(key))
    except AirlockError as exc:
        shown = {**Policy().model_dump(), **{n: form.get(n, "") for n in (*NUMBERS, "metric", "eval_set")},
                 **{n: n in form for n in FLAGS}}
        return _policy_page(request, airlock, key, alias, status=exc.http_status, error=exc.message,
                            problems=getattr(exc, "problems", None), shown=shown)
    return RedirectResponse(f"/gate/policies/{alias}", status_code=303)


# Requests ----------------------------------------------------------------------------------------


@router.get("/gate/requests", response_class=HTMLResponse)
def requests_page(request: Request, airlock: AirlockDep, key: Key = Depends(page("models:read"))) -> HTMLResponse:
    from airlock.promotion.requests import list_requests, viewer_from_key

    viewer = viewer_from_key(key)
    return render(request, "gate_requests.html", key, requests=list_requests(airlock, viewer), viewer=viewer)


def _decision_allowed(key: Key, view: dict, policy: Policy | None) -> str | None:
    """Why this key is offered no Approve/Reject buttons on `view` (None: it is offered them). The
    service decides again on every post: this only keeps the page from offering what it refuses."""
    from airlock.promotion.approvals import approver_from_key

    approver = approver_from_key(key, actor(key))
    if view["state"] != "pending":
        return f"this request is {view['state']}"
    if not approver.may_approve:
        return "approvals are given by keys whose role has 'models:approve' (an approver's)"
    if approver.holder == view["author"] or approver.key_id == view["author_key"]:
        return "you are the author of this candidate: people other than its author decide on it"
    if approver.is_admin and not (policy and policy.admins_may_approve):
        return "the alias's policy counts approvers' keys only, not admins'"
    if any(a["holder"] == approver.holder for a in view["approvals"]):
        return "you decided on this request already"
    return None


def _request_page(request: Request, airlock, key: Key, request_id: str, status: int = 200,
                  error: str | None = None) -> HTMLResponse:
    from airlock.promotion.policy import policy_version
    from airlock.promotion.requests import request_view, viewer_from_key
    from airlock.workflow.lineage import lineage

    try:
        view = request_view(airlock, viewer_from_key(key), request_id)
        chain = lineage(airlock, view["model_id"])
    except AirlockError as exc:
        return render(request, "error.html", key, status=exc.http_status, error=exc.message)
    policy_row = policy_version(airlock, view["alias"], view["policy_version"])
    policy = policy_row.policy if policy_row else None
    scores = view["scores"]
    models = [m for m in ("base", "champion", "candidate") if scores.get(m)]
    return render(request, "gate_request.html", key, status=status, error=error, req=view, chain=chain,
                  policy=policy, models=models, scores=scores, examples=view.get("examples"),
                  no_buttons=_decision_allowed(key, view, policy), reviewer=may(key, APPROVES))


@router.get("/gate/requests/{request_id}", response_class=HTMLResponse)
def request_page(request_id: str, request: Request, airlock: AirlockDep,
                 key: Key = Depends(page("models:read"))) -> HTMLResponse:
    return _request_page(request, airlock, key, request_id)


def _decide(request: Request, airlock, key: Key, request_id: str, verdict: str, comment: str) -> Response:
    from airlock.promotion.approvals import approver_from_key
    from airlock.workflow.gatekeeper import decide_and_promote

    try:
        decide_and_promote(airlock, approver_from_key(key, actor(key)), request_id, verdict, comment=comment)
    except AirlockError as exc:
        return _request_page(request, airlock, key, request_id, status=exc.http_status, error=exc.message)
    return RedirectResponse(f"/gate/requests/{request_id}", status_code=303)


# Guarded by models:read only, so that a key which may not decide hears why from the service
# itself (the same words /api and the CLI give), not a generic refusal of the page.
@router.post("/gate/requests/{request_id}/approve", response_class=HTMLResponse)
def approve_form(request_id: str, request: Request, airlock: AirlockDep, key: Key = Depends(page("models:read")),
                 form: dict = Depends(posted_form)) -> Response:
    from airlock.promotion.approvals import APPROVE

    return _decide(request, airlock, key, request_id, APPROVE, form.get("comment", ""))


@router.post("/gate/requests/{request_id}/reject", response_class=HTMLResponse)
def reject_form(request_id: str, request: Request, airlock: AirlockDep, key: Key = Depends(page("models:read")),
                form: dict = Depends(posted_form)) -> Response:
    from airlock.promotion.approvals import REJECT

    return _decide(request, airlock, key, request_id, REJECT, form.get("reason", ""))
