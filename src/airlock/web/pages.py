"""What every page shares (the signed-in key, the navigation, rendering, refusals) and signing in
and out. Each capability's pages (datasets.py, runs.py, ...) are rendered on the server from the
service functions `/api` calls; a page a role may not see is neither linked nor served (403,
audited like any refusal), and changes are made by the page's script through `/api`."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from airlock.access.roles import may
from airlock.access.sessions import COOKIE, check_csrf, key_of_session
from airlock.errors import AirlockError, Forbidden, RateLimited, Unauthorized
from airlock.gateway.auth import check_permission, check_same_origin, client_address, guarded_check
from airlock.gateway.redact import redact_text, sees_internals
from airlock.web import TEMPLATES

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=TEMPLATES)

# (label, path, the permission a role needs to see it), in the order of the journey.
NAV = [
    ("Runs", "/runs", "runs:read"),
    ("New fine-tune", "/runs/new", "runs:write"),
    ("Datasets", "/datasets", "datasets:read"),
    ("Models", "/models", "models:read"),
    ("Approvals", "/gate/requests", "models:read"),
    ("Policies", "/gate/policies", "models:read"),
    ("Serving", "/serving", "aliases:read"),
    ("Playground", "/playground", "inference"),
    ("Keys", "/keys", "keys:admin"),
    ("Audit", "/audit", "audit:read"),
]


class SignInFirst(Exception):
    """A page asked for without a live session: the browser is sent to sign in, then back."""

    def __init__(self, back_to: str) -> None:
        self.back_to = back_to


class PageRefused(Exception):
    def __init__(self, error: AirlockError) -> None:
        self.error = error


def page(permission: str):
    """A page's dependency: the signed-in key, with the role's permission checked (and a refusal
    audited); no session sends the browser to sign in."""

    async def dependency(request: Request) -> dict[str, Any]:
        snapshot = await request.app.state.registry.current()
        session = request.app.state.sessions.find(request.cookies.get(COOKIE))
        try:
            key = key_of_session(session, snapshot.keys)
        except Unauthorized:
            raise SignInFirst(request.url.path) from None
        request.state.session, request.state.page_key = session, key
        try:
            check_permission(request.app.state.recorder, key, permission, request.method, request.url.path)
        except Forbidden as exc:
            raise PageRefused(exc) from None
        return key

    return dependency


async def posted_form(request: Request) -> dict[str, str]:
    """A page form's fields, once its origin and the session's CSRF token (the form's `csrf`
    field) are checked: a form posted from another site is refused before anything changes.
    Declare it after the page's key, whose dependency finds the session."""
    form = await request.form()
    try:
        check_same_origin(request)
        check_csrf(request.state.session, str(form.get("csrf") or ""))
    except Forbidden as exc:
        raise PageRefused(exc) from None
    return {name: str(value) for name, value in form.items()}


def render(request: Request, template: str, key: dict | None, status: int = 200, **context) -> HTMLResponse:
    session = getattr(request.state, "session", None)
    if context.get("error") and not (key and sees_internals(key)):
        context["error"] = redact_text(context["error"])  # host paths are for admins, as on /api
    nav = [(label, path) for label, path, permission in NAV if key and may(key, permission)]
    # The one entry this page belongs to: the longest path that is the page's or a parent of it.
    current = max((p for _, p in nav if request.url.path == p or request.url.path.startswith(p + "/")),
                  key=len, default=None)
    return templates.TemplateResponse(request, template, {
        "key": key, "csrf": session.csrf if session else "", "nav": nav, "current": current,
        "status_code": status, **context,
    }, status_code=status)


def _safe_back(path: str | None) -> str:
    """Only a path of this site to return to after sign-in, never another host."""
    return path if path and path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


# Signing in and out ---------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def home(key: dict = Depends(page("runs:read"))) -> Response:
    return RedirectResponse("/runs", status_code=303)


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_page(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "sign_in.html", None, back_to=_safe_back(next))


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request) -> Response:
    form = await request.form()
    back_to = _safe_back(str(form.get("next") or "/"))
    snapshot = await request.app.state.registry.current()
    try:
        check_same_origin(request)
        key = guarded_check(request.app.state, snapshot.keys, f"Bearer {str(form.get('key') or '').strip()}",
                            client_address(request.client), "sign-in")
        token, _ = request.app.state.sessions.start(key)
    except (Unauthorized, Forbidden, RateLimited) as exc:
        page = render(request, "sign_in.html", None, status=exc.http_status, error=exc.message, back_to=back_to)
        if isinstance(exc, RateLimited):
            page.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return page
    settings = request.app.state.settings
    response = RedirectResponse(back_to, status_code=303)
    response.set_cookie(COOKIE, token, max_age=int(settings.web_session_hours * 3600), httponly=True,
                        samesite="strict", secure=settings.tls_enabled, path="/")
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    form = await request.form()
    token = request.cookies.get(COOKIE)
    session = request.app.state.sessions.find(token)
    if session is not None:
        check_same_origin(request)
        check_csrf(session, str(form.get("csrf") or ""))
        request.app.state.sessions.end(token)
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def install_page_errors(app) -> None:
    """A missing session sends the browser to sign in; a refused page is a page, not JSON."""

    async def to_sign_in(request: Request, exc: SignInFirst) -> Response:
        return RedirectResponse(f"/sign-in?next={quote(exc.back_to, safe='/')}", status_code=303)

    async def refused(request: Request, exc: PageRefused) -> Response:
        key = getattr(request.state, "page_key", None)
        return render(request, "error.html", key, status=exc.error.http_status, error=exc.error.message)

    app.add_exception_handler(SignInFirst, to_sign_in)
    app.add_exception_handler(PageRefused, refused)
