"""Checks beyond schemathesis' own, each a rule OpenAI's document and clients imply. A check takes
(ctx, response, case), raises AssertionError to fail, and returns None otherwise."""

from __future__ import annotations

import json


def _error(response) -> dict:
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:200]!r}") from None
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        raise AssertionError(f"{response.status_code} body has no 'error' object: {json.dumps(body)[:300]}")
    return body["error"]


def openai_error_shape(ctx, response, case):
    """{"error": {"message": non-empty str, "type": str, "param": str|null, "code": str|null}}."""
    if not 400 <= response.status_code < 500:
        return None
    error = _error(response)
    wrong = [f"{name} is {json.dumps(error.get(name, '<missing>'))}, not {kind}"
             for name, kind, ok in (("message", "a non-empty string", lambda v: isinstance(v, str) and v),
                                    ("type", "a string", lambda v: isinstance(v, str)),
                                    ("param", "a string or null", lambda v: v is None or isinstance(v, str)),
                                    ("code", "a string or null", lambda v: v is None or isinstance(v, str)))
             if name not in error or not ok(error[name])]
    if wrong:
        raise AssertionError(f"{response.status_code} error not in OpenAI's shape: {'; '.join(wrong)}; "
                             f"error: {json.dumps(error)[:300]}")
    return None


def served_model_found(served: str):
    """A check: the served model, which GET /models lists, is never "not found"."""

    def served_model_found(ctx, response, case):
        body = case.body if isinstance(case.body, dict) else {}
        named = (case.path_parameters or {}).get("model") or body.get("model")
        if response.status_code == 404 and named == served:
            raise AssertionError(f"404 for the served model {served!r}, which GET /models lists: "
                                 f"{response.content[:300]!r}")
        return None

    return served_model_found


def null_is_default(ctx, response, case):
    """A request valid against the document that sets a field to null asks for its default;
    a 4xx blaming that field refuses what the document allows."""
    if not 400 <= response.status_code < 500 or case.meta is None or not case.meta.generation.mode.is_positive:
        return None
    param = _error(response).get("param")
    if isinstance(param, str):
        param = param.removeprefix("body.")  # vLLM names a field by where it is: body.n
    if isinstance(case.body, dict) and param in case.body and case.body[param] is None:
        raise AssertionError(f"{response.status_code} for {param}: null, which the document allows: "
                             f"{response.content[:300]!r}")
    return None
