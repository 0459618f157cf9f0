"""The playground: a chat with an alias and with its base model side by side, streamed, before
a model is promoted or after. The page's script calls /v1/chat/completions itself, with the
session's cookie and CSRF token, so what it shows is exactly what an app with a key would get;
it also shows that request as curl and as Python `openai` code."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from airlock.web.pages import page, render

router = APIRouter(include_in_schema=False)


@router.get("/playground", response_class=HTMLResponse)
async def playground_page(request: Request, alias: str = "", key: dict = Depends(page("inference"))) -> HTMLResponse:
    snapshot = await request.app.state.registry.current()
    scope = key.get("models")
    base = request.app.state.settings.serve_base_model
    names = [name for name in sorted(snapshot.aliases) if scope is None or name in scope]
    return render(request, "playground.html", key, aliases=names, chosen=alias if alias in names else "",
                  base=base if scope is None or base in scope else "",
                  max_tokens=min(256, request.app.state.settings.max_completion_tokens))
