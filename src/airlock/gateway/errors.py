"""Every error the gateway answers, in OpenAI's shape: {"error": {message, type, param, code}}.

OpenAI clients read `error.message` and raise a typed exception from the status code, so one
handler per exception family is all it takes for every app to see a clear, uniform error.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from airlock.errors import AirlockError, InvalidInput, NotFound

log = logging.getLogger("airlock.gateway")

# The `type` values OpenAI's own API uses, by status (a 404 for a model or a URL is an
# invalid_request_error there, with code model_not_found or null).
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class BadRequest(InvalidInput):
    """A request body the gateway refuses before it reaches vLLM; `param` names the field."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFound(NotFound):
    code = "model_not_found"
    param = "model"


class UpstreamError(AirlockError):
    """vLLM accepted the connection but the exchange broke (reset, protocol error)."""

    http_status = 502
    code = "upstream_error"


class UpstreamTimeout(AirlockError):
    http_status = 504
    code = "upstream_timeout"


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(message: str, status: int, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def error_response(message: str, status: int, code: str | None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, code, param), status_code=status, headers=headers)


def from_airlock_error(exc: AirlockError) -> JSONResponse:
    status = exc.http_status
    # RFC 9110: a 401 names the scheme the client should use; a 429 says when to come back.
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if (retry_after := getattr(exc, "retry_after", None)) is not None:
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
    body = error_body(str(exc), status, exc.code, getattr(exc, "param", None))
    if exc.problems:
        # Beside OpenAI's fields: every problem on its own, for a client (the web UI) to list.
        body["error"] |= {"summary": exc.message, "problems": exc.problems}
    return JSONResponse(body, status_code=status, headers=headers)


async def _airlock_error(_: Request, exc: AirlockError) -> JSONResponse:
    return from_airlock_error(exc)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(message, exc.status_code, codes.get(exc.status_code), headers=exc.headers)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
    )
    return error_response(f"invalid request: {problems}", 400, InvalidInput.code)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    # The details go to the log only: they may hold paths or internals an app should not see.
    log.exception("unhandled error in the gateway")
    return error_response("internal error in the gateway; the operator can find it in its log",
                          500, "internal_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AirlockError, _airlock_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
