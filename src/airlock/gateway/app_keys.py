"""The API-key dependency shared by /v1 and /api."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from airlock.gateway import apikeys


async def require_key(request: Request) -> dict[str, Any]:
    """The caller's key row, or 401 in OpenAI's error format."""
    key = apikeys.authenticate(request.app.state.meta, request.headers.get("authorization"))
    request.state.api_key = key
    return key
