"""The serving page (admin): each alias, the adapter it serves, its history with the promotion
record behind each champion (who approved it, under which policy version), the switch to another
promoted adapter and the roll-back to the previous approved champion.

The switch goes through the page's script to PUT /api/aliases/{alias}; the roll-back is a form
posted here with the session's CSRF token, calling the gate's own `rollback`, which verifies the
earlier champion's promotion record, loads and smoke-tests it before the alias moves."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from airlock.access.roles import may
from airlock.errors import AirlockError
from airlock.gateway.auth import actor
from airlock.gateway.deps import AirlockDep, Key
from airlock.web.pages import page, posted_form, render

router = APIRouter(include_in_schema=False)


def _earlier_champion(airlock, alias: dict, history: list[dict]) -> str | None:
    """The adapter a roll-back would serve: the newest earlier approved champion not revoked
    (the gate checks its record again when the button is pressed)."""
    revoked = {r["id"] for r in airlock.meta.query("SELECT id FROM models WHERE revoked_at IS NOT NULL")}
    return next((h["model_id"] for h in history if h["promotion_id"] and h["model_id"] != alias["model_id"]
                 and h["model_id"] not in revoked), None)


def serving_page(request: Request, airlock, key: Key, status: int = 200, error: str | None = None,
                 failed_alias: str | None = None) -> HTMLResponse:
    from airlock.models.adapters import list_models
    from airlock.serve.deploy import list_aliases
    from airlock.workflow.gatekeeper import alias_history

    served = airlock.settings.serve_base_model
    promoted = [m for m in reversed(list_models(airlock)) if m["promotions"] and m["base_model"] == served]
    aliases = []
    for alias in list_aliases(airlock):
        history = alias_history(airlock, alias["name"])
        aliases.append({**alias, "history": history, "previous": _earlier_champion(airlock, alias, history),
                        "canary": _canary_view(airlock, alias["name"])})
    return render(request, "serving.html", key, status=status, aliases=aliases, promoted=promoted, served_base=served,
                  can_switch=may(key, "aliases:write"), error=error, failed_alias=failed_alias,
                  figures=request.app.state.metrics.by_model())


def _canary_view(airlock, alias: str) -> dict | None:
    """The alias's newest canary for the page: its row, both sides' figures, and their latencies
    in the order answered (ms), the chart's two series."""
    from airlock.errors import NotFound
    from airlock.serve.canary import canary_status

    try:
        canary = canary_status(airlock, alias)
    except NotFound:
        return None
    arms = canary.arms()
    series = {side: [round(s * 1000, 1) for s in arm.latencies] for side, arm in arms.items()}
    return {**canary.as_dict(), "open": canary.state in ("running", "passed"), "series": json.dumps(series)}


@router.get("/serving", response_class=HTMLResponse)
def serving(request: Request, airlock: AirlockDep, key: Key = Depends(page("aliases:read"))) -> HTMLResponse:
    return serving_page(request, airlock, key)


@router.post("/serving/{alias}/rollback", response_class=HTMLResponse)
def rollback_form(alias: str, request: Request, airlock: AirlockDep, key: Key = Depends(page("aliases:write")),
                  form: dict = Depends(posted_form)) -> Response:
    from airlock.workflow.gatekeeper import rollback

    try:
        rollback(airlock, alias, actor=actor(key))
    except AirlockError as exc:
        return serving_page(request, airlock, key, status=exc.http_status, error=exc.message, failed_alias=alias)
    return RedirectResponse("/serving", status_code=303)


@router.post("/serving/{alias}/canary", response_class=HTMLResponse)
def canary_form(alias: str, request: Request, airlock: AirlockDep, key: Key = Depends(page("aliases:write")),
                form: dict = Depends(posted_form)) -> Response:
    from airlock.serve.canary import parse_window, start_canary

    try:
        start_canary(airlock, alias, form.get("candidate", ""), percent=_number(form, "percent", float),
                     window_s=parse_window(form.get("window", "")),
                     max_error_rate=_number(form, "max_error_rate", float),
                     max_latency_ratio=_number(form, "max_latency_ratio", float),
                     min_requests=_number(form, "min_requests", int), actor=actor(key))
    except AirlockError as exc:
        return serving_page(request, airlock, key, status=exc.http_status, error=exc.message, failed_alias=alias)
    return RedirectResponse("/serving", status_code=303)


@router.post("/serving/{alias}/canary/abort", response_class=HTMLResponse)
def canary_abort_form(alias: str, request: Request, airlock: AirlockDep, key: Key = Depends(page("aliases:write")),
                      form: dict = Depends(posted_form)) -> Response:
    from airlock.serve.canary import abort_canary

    try:
        abort_canary(airlock, alias, actor=actor(key))
    except AirlockError as exc:
        return serving_page(request, airlock, key, status=exc.http_status, error=exc.message, failed_alias=alias)
    return RedirectResponse("/serving", status_code=303)


def _number(form: dict, field: str, kind: type):
    from airlock.errors import InvalidInput

    try:
        return kind(form.get(field, ""))
    except ValueError:
        raise InvalidInput(f"{field.replace('_', ' ')}: {form.get(field, '')!r} is not a number") from None
