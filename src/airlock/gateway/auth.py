"""The gateway's key checks: the caller's key from memory, and the permission a route needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, Request

from airlock.access.keys import KeyRow, check_key, presented_id
from airlock.access.sessions import COOKIE, CSRF_HEADER, Sessions, check_csrf, key_of_session
from airlock.access.roles import require_permission
from airlock.errors import Forbidden, RateLimited, Unauthorized


SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


async def require_key(request: Request) -> KeyRow:
    """The caller's key row (from the in-memory registry), or 401 in OpenAI's error format: from
    an `Authorization: Bearer` header, or else from the web UI's session cookie."""
    snapshot = await request.app.state.registry.current()
    authorization = request.headers.get("authorization")
    if authorization is None and COOKIE in request.cookies:
        headers = request.headers
        key = key_of_cookie(request.app.state.sessions, snapshot.keys, request.cookies[COOKIE], request.method,
                            origin=headers.get("origin"), own_origin=f"{request.url.scheme}://{headers.get('host', '')}",
                            csrf=headers.get(CSRF_HEADER))
    else:
        key = guarded_check(request.app.state, snapshot.keys, authorization, client_address(request.client), "api")
    request.state.api_key = key
    request.state.snapshot = snapshot
    return key


def client_address(client: Any) -> str:
    """The peer's address (the gateway reads no forwarding headers: proxy_headers is off)."""
    return client[0] if client else "unknown"


def guarded_check(state: Any, keys: dict[str, dict], authorization: str | None, address: str,
                  door: str) -> dict[str, Any]:
    """check_key, with failed authentications counted per address and key id, refused with 429
    past the limit (state.failures), counted in /metrics and summarised in the audit log. A
    request that presents no key at all is not a guess and is not counted."""
    key_id = presented_id(authorization, keys)
    try:
        state.failures.check(address, key_id)
    except RateLimited:
        state.metrics.count_auth_throttled(door)
        raise
    try:
        return check_key(keys, authorization)
    except Unauthorized:
        if authorization is not None:
            state.failures.failed(address, key_id, door)
            state.metrics.count_auth_failure(door)
        raise


def key_of_cookie(sessions: Sessions, keys: dict[str, dict], token: str, method: str, *, origin: str | None,
                  own_origin: str, csrf: str | None) -> dict[str, Any]:
    """The key behind a session cookie; a change must also carry the session's CSRF token and
    come from a page of this origin."""
    session = sessions.find(token)
    key = key_of_session(session, keys)
    if method not in SAFE_METHODS:
        check_origin(origin, own_origin)
        check_csrf(session, csrf)
    return key


def check_same_origin(request: Request) -> None:
    check_origin(request.headers.get("origin"), f"{request.url.scheme}://{request.headers.get('host', '')}")


def check_origin(origin: str | None, own_origin: str) -> None:
    """A browser names the page a change comes from (Origin); it must be one of ours."""
    if origin is not None and origin != own_origin:
        raise Forbidden(f"a change from the page of another site ({origin}) is refused")


def permit(permission: str) -> Callable:
    """A route dependency: the caller's key, or 403 naming `permission` (and an audit row). The key
    comes through `Depends(require_key)`, which FastAPI runs once per request however many of a
    route's dependencies (gateway/deps.py) ask for it."""

    async def dependency(request: Request, key: KeyRow = Depends(require_key)) -> KeyRow:
        check_permission(request.app.state.recorder, key, permission, request.method, request.url.path)
        return key

    return dependency


def check_permission(recorder: Any, key: dict[str, Any], permission: str, method: str, path: str) -> None:
    """Forbidden naming `permission` unless the key's role carries it; a refusal is audited."""
    try:
        require_permission(key, permission)
    except Forbidden:
        recorder.refused(actor(key), key["id"], permission, method, path)
        raise


def actor(key: dict[str, Any]) -> str:
    """How an HTTP caller appears in the audit log."""
    return f"key:{key['id']}"
