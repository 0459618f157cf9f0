"""The gateway's key checks: the caller's key from memory, and the permission a route needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request

from airlock.access.keys import check_key
from airlock.access.roles import require_permission
from airlock.errors import Forbidden


async def require_key(request: Request) -> dict[str, Any]:
    """The caller's key row (from the in-memory registry), or 401 in OpenAI's error format."""
    snapshot = await request.app.state.registry.current()
    key = check_key(snapshot.keys, request.headers.get("authorization"))
    request.state.api_key = key
    request.state.snapshot = snapshot
    return key


def permit(permission: str) -> Callable:
    """A route dependency: the caller's key, or 403 naming `permission` (and an audit row)."""

    async def dependency(request: Request) -> dict[str, Any]:
        key = await require_key(request)
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
