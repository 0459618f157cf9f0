"""The serving page (admin): each alias, the adapter it serves, its history with the promotion
record behind each champion (who approved it, under which policy version), the switch to another
promoted adapter and the roll-back to the previous approved champion.

The switch goes through the page's script to PUT /api/aliases/{alias}; the roll-back is a form
posted here with the session's CSRF token, calling the gate's own `rollback`, which verifies the
earlier champion's promotion record, loads and smoke-tests it before the alias moves."""

from __future__ import annotations

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
        aliases.append({**alias, "history": history, "previous": _earlier_champion(airlock, alias, history)})
    return render(request, "serving.html", key, status=status, aliases=aliases, promoted=promoted, served_base=served,
                  can_switch=may(key, "aliases:write"), error=error, failed_alias=failed_alias,
                  figures=request.app.state.metrics.by_model())


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
