"""The local web UI, served by the gateway at `/`, same origin as `/api`.

Pages are rendered on the server from the same service functions the CLI and `/api` call, and a
small script of our own (static/ui.js) sends every change to `/api` with the session's CSRF token:
the UI holds no logic of its own. Every asset is served from here, and the Content-Security-
Policy allows this origin only (security.py).

    create_app(settings, ui=install)   # airlock.gateway.app; `airlock gateway` does this
"""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).parent / "static"
TEMPLATES = Path(__file__).parent / "templates"


def install(app) -> None:
    """Add the UI's pages, its static files and its security headers to the gateway's app."""
    from fastapi.staticfiles import StaticFiles

    from airlock.web import admin, datasets, gate, launch, models, pages, playground, runs, serving
    from airlock.web.security import SecurityHeaders

    # /runs/new before /runs/{run_id}, which would take it for a run's id.
    for module in (pages, launch, runs, datasets, models, gate, serving, playground, admin):
        app.include_router(module.router)
    pages.install_page_errors(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(SecurityHeaders)
