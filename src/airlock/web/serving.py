"""The serving page (admin): each alias, the adapter it serves, its history, and the switch to
another promoted adapter, a roll-back being a switch to one it served before. The page's script
sends the switch to PUT /api/aliases/{alias}, which verifies, loads and smoke-tests the adapter
before any request reaches it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from airlock.access.roles import may
from airlock.gateway.deps import AirlockDep, Key
from airlock.web.pages import page, render

router = APIRouter(include_in_schema=False)


@router.get("/serving", response_class=HTMLResponse)
def serving_page(request: Request, airlock: AirlockDep, key: Key = Depends(page("aliases:read"))) -> HTMLResponse:
    from airlock.models.adapters import list_models
    from airlock.serve.deploy import list_aliases

    served = airlock.settings.serve_base_model
    promoted = [m for m in reversed(list_models(airlock)) if m["promotions"] and m["base_model"] == served]
    aliases = []
    for alias in list_aliases(airlock):
        history = airlock.meta.query("SELECT model_id, at FROM alias_history WHERE alias = ? ORDER BY id DESC",
                                     (alias["name"],))
        earlier = [h for h in history[1:] if h["model_id"] != alias["model_id"]]
        aliases.append({**alias, "history": history, "previous": earlier[0]["model_id"] if earlier else None})
    return render(request, "serving.html", key, aliases=aliases, promoted=promoted, served_base=served,
                  can_switch=may(key, "aliases:write"))
