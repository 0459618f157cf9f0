"""What the control API shows of runs and errors to callers whose role
lacks `errors:internals` (every role but admin).

Stage errors can hold tracebacks, and messages and resolved specs can hold host paths (the
base model's folder, a dataset file the CLI read, the store). They help the operator and tell
anyone else about the host, so a non-admin key sees the first line of an error with absolute
paths replaced by `<path>`, and a resolved spec without the base model's folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airlock.access.roles import SEES_INTERNALS, may
from airlock.errors import AirlockError

PATH = "<path>"
# An absolute (or home-relative) path: a '/' that starts a word, up to a delimiter. Routes of
# this API (/api/..., /v1/...) are instructions to the caller, not host paths, and stay.
_ABSOLUTE = re.compile(r"(?<![\w.~:/-])~?/(?!api/|v1/)[^\s'\"`,;()\[\]{}<>]+")


def sees_internals(key: dict[str, Any]) -> bool:
    """Whether the key's role sees errors as they are (host paths and tracebacks included)."""
    return may(key, SEES_INTERNALS)


def redact_text(text: str) -> str:
    return _ABSOLUTE.sub(PATH, text)


def first_line(text: str | None) -> str | None:
    if text is None:
        return None
    return redact_text(text.strip().splitlines()[0] if text.strip() else "")


def _strings(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings(v) for v in value]
    return value


def run_view(run: dict[str, Any], key: dict[str, Any]) -> dict[str, Any]:
    """A run (from `workflow.runs`) as this key may see it."""
    if sees_internals(key):
        return run
    out = {**run, "error": first_line(run.get("error"))}
    if "stages" in run:
        out["stages"] = [{**s, "error": first_line(s.get("error"))} for s in run["stages"]]
    if "spec" in run:
        out["spec"] = spec_view(run["spec"])
    return out


def spec_view(resolved: dict[str, Any]) -> dict[str, Any]:
    """A queued spec without the base model's host folder, and with paths the CLI read hidden."""
    base = resolved.get("base_model") or {}
    return {**_strings({k: v for k, v in resolved.items() if k != "base_model"}),
            "base_model": {k: v for k, v in base.items() if k != "path"}}


@contextmanager
def redacted_errors(key: dict[str, Any]) -> Iterator[None]:
    """Errors raised inside reach a non-admin caller with host paths replaced."""
    try:
        yield
    except AirlockError as exc:
        if not sees_internals(key):
            exc.message = redact_text(exc.message)
            exc.problems = [redact_text(p) for p in exc.problems]
            exc.args = (exc.message,)
        raise
