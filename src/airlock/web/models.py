"""The models pages: every adapter with its verification state, and one adapter's signed manifest
in readable form with its lineage drawn as a chain (dataset -> run -> adapter -> promotion ->
alias -> the keys that called it). An adapter's page checks it against its signed manifest
(signature, then every stored file's digest) as the engine's load does; the list shows the
outcome of each adapter's latest check, wherever it was made. Keys that may revoke (approvers,
admins) revoke an adapter from its page, with a reason: a form posted here with the session's
CSRF token, calling the gate's own `revoke`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from airlock.access.roles import REVOKES, may
from airlock.errors import AirlockError
from airlock.gateway.auth import actor
from airlock.gateway.deps import AirlockDep, Key
from airlock.gateway.redact import redact_text, sees_internals
from airlock.web.pages import page, posted_form, render

router = APIRouter(include_in_schema=False)


def verification(airlock, model_id: str) -> tuple[dict[str, Any], dict | None]:
    """({state, reason}, the verified manifest or None): verified, unsigned (not yet evaluated),
    or failed with the reason."""
    from airlock.promotion.signing import verify_model

    try:
        return {"state": "verified", "reason": ""}, verify_model(airlock, model_id)
    except AirlockError as exc:
        unsigned = "has no signed manifest yet" in exc.message
        return {"state": "unsigned" if unsigned else "failed", "reason": str(exc)}, None


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, airlock: AirlockDep, key: Key = Depends(page("models:read"))) -> HTMLResponse:
    from airlock.models.adapters import list_models
    from airlock.models.catalog import list_base_models

    models = list(reversed(list_models(airlock)))  # newest first
    for model in models:
        model["verification"] = shown(latest_check(model), key)
    bases = [base_shown(base, key) for base in list_base_models(airlock.settings)]
    return render(request, "models.html", key, models=models, bases=bases)


def base_shown(base: dict, key: dict) -> dict:
    """A base model as this key may read it: where it lies and where it was imported from are host
    paths, for admins only."""
    if sees_internals(key):
        return base
    provenance = {k: v for k, v in (base["provenance"] or {}).items() if k not in ("imported_from", "chat_template_from")}
    return {**base, "path": "", "provenance": provenance or None}


def shown(check: dict[str, Any], key: dict) -> dict[str, Any]:
    """A check as this key may read it: the store's host paths are for admins (as on /api)."""
    return check if sees_internals(key) else {**check, "reason": redact_text(check["reason"])}


def latest_check(model: dict) -> dict[str, Any]:
    if not model["manifest_digest"]:
        return {"state": "unsigned", "reason": "not evaluated yet, so not signed"}
    if not model["checked_at"]:
        return {"state": "unchecked", "reason": "signed, not checked since"}
    if model["check_error"]:
        return {"state": "failed", "reason": model["check_error"], "at": model["checked_at"]}
    return {"state": "verified", "reason": "", "at": model["checked_at"]}


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(model_id: str, request: Request, airlock: AirlockDep,
               key: Key = Depends(page("models:read"))) -> HTMLResponse:
    return _model_page(request, airlock, key, model_id)


def _model_page(request: Request, airlock, key: Key, model_id: str, status: int = 200,
                error: str | None = None) -> HTMLResponse:
    from airlock.models.adapters import get_model
    from airlock.workflow.lineage import lineage

    try:
        chain = lineage(airlock, model_id)
    except AirlockError as exc:
        return render(request, "error.html", key, status=exc.http_status, error=exc.message)
    state, manifest = verification(airlock, model_id)
    state = shown(state, key)
    files = sorted((manifest or {}).get("files", {}).items())
    model = get_model(airlock, model_id)
    revoked = {k: model[k] for k in ("revoked_at", "revoked_by", "revoked_reason")} if model["revoked_at"] else None
    return render(request, "model.html", key, status=status, chain=chain, verification=state, manifest=manifest,
                  files=files, can_verify=may(key, "models:verify"), can_revoke=may(key, REVOKES) and not revoked,
                  revoked=revoked, error=error)


@router.post("/models/{model_id}/revoke", response_class=HTMLResponse)
def revoke_form(model_id: str, request: Request, airlock: AirlockDep, key: Key = Depends(page(REVOKES)),
                form: dict = Depends(posted_form)) -> Response:
    from airlock.workflow.gatekeeper import revoke

    try:
        revoke(airlock, model_id, form.get("reason", ""), actor=actor(key))
    except AirlockError as exc:
        return _model_page(request, airlock, key, model_id, status=exc.http_status, error=exc.message)
    return RedirectResponse(f"/models/{model_id}", status_code=303)
