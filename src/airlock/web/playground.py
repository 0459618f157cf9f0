"""The playground: a chat with an alias and with its base model side by side, streamed, before
a model is promoted or after. The page's script calls /v1/chat/completions itself, with the
session's cookie and CSRF token, so what it shows is exactly what an app with a key would get;
it also shows that request as curl and as Python `openai` code.

The models offered are those /v1/models lists for the signed-in key: its scope, and among the
gate's staging names (`ALIAS.candidate-N`) only those it may call (the candidate's author,
approvers, admins), each labelled as the candidate for its alias."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from airlock.gateway.v1 import may_call
from airlock.promotion.requests import STAGING_SUFFIX
from airlock.web.pages import page, render

router = APIRouter(include_in_schema=False)


def label(name: str) -> str:
    """`ALIAS.candidate-N (candidate for ALIAS)` for a staging name, the name itself otherwise."""
    alias, suffix, number = name.rpartition(STAGING_SUFFIX)
    return f"{name} (candidate for {alias})" if suffix and alias and number.isdigit() else name


@router.get("/playground", response_class=HTMLResponse)
async def playground_page(request: Request, alias: str = "", key: dict = Depends(page("inference"))) -> HTMLResponse:
    snapshot = await request.app.state.registry.current()
    scope = key.get("models")
    base = request.app.state.settings.serve_base_model
    names = [name for name, row in sorted(snapshot.aliases.items())
             if (scope is None or name in scope) and may_call(key, row)]
    return render(request, "playground.html", key, aliases=[(name, label(name)) for name in names],
                  chosen=alias if alias in names else "", base=base if scope is None or base in scope else "",
                  max_tokens=min(256, request.app.state.settings.max_completion_tokens))
