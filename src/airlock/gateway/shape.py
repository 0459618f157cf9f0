"""OpenAI's shape for what the engine answers: the model name the client asked for, no nulls
where the published schema allows none, `refusal` where it is required, and engine errors
turned into OpenAI errors with one readable message naming the parameter.

vLLM's response models serialise every optional field, set or not, so its bodies carry
`annotations: null`, `function_call: null`, `usage.prompt_tokens_details: null` and engine-only
keys, which strict OpenAI clients and schema validators reject. Dropping the nulls is enough:
every such field is optional in the schema. The few fields the schema requires even when empty
(a message's `content` and `refusal`, a choice's `logprobs` and `finish_reason`) are kept.
"""

from __future__ import annotations

import ast
import logging
from typing import Any, NamedTuple

import msgspec

from airlock.gateway.errors import error_body

log = logging.getLogger("airlock.gateway")

# One decoder and encoder for the gateway (v1.py uses them for request bodies too).
decode_json = msgspec.json.Decoder().decode
encode_json = msgspec.json.Encoder().encode

_CHOICE_NULLABLE = frozenset({"logprobs", "finish_reason"})
_MESSAGE_NULLABLE = frozenset({"content", "refusal"})
_NOTHING: frozenset[str] = frozenset()


def _drop_nulls(obj: dict[str, Any], keep: frozenset[str]) -> None:
    for name in [k for k, v in obj.items() if v is None and k not in keep]:
        del obj[name]


def shape_result(data: dict[str, Any], model: str) -> dict[str, Any]:
    """A completion, chat completion or stream chunk in the schema's shape, under `model`."""
    _drop_nulls(data, _NOTHING)
    data["model"] = model
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        _drop_nulls(choice, _CHOICE_NULLABLE)
        if isinstance(message := choice.get("message"), dict):
            _drop_nulls(message, _MESSAGE_NULLABLE)
            message.setdefault("refusal", None)
        elif isinstance(delta := choice.get("delta"), dict):
            _drop_nulls(delta, _MESSAGE_NULLABLE)
        # A chat choice's logprobs ({content, refusal}) requires both; completions' differ.
        if isinstance(logprobs := choice.get("logprobs"), dict) and "content" in logprobs:
            logprobs.setdefault("refusal", None)
    if isinstance(usage := data.get("usage"), dict):
        _drop_nulls(usage, _NOTHING)
    return data


class Usage(NamedTuple):
    """An answer's token counts as the engine reports them."""

    prompt: int
    generated: int

    @property
    def total(self) -> int:
        return self.prompt + self.generated


NO_USAGE = Usage(0, 0)


def usage_of(data: dict[str, Any]) -> Usage | None:
    """The `usage` of an answer or event, None when it has none (or one not made of counts)."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, generated = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return Usage(prompt, generated) if type(prompt) is int and type(generated) is int else None


def shape_body(raw: bytes, model: str) -> tuple[bytes, Usage]:
    """(the reshaped body, its usage); a body that is not a JSON object passes as is."""
    try:
        data = decode_json(raw)
    except msgspec.DecodeError:
        return raw, NO_USAGE
    if not isinstance(data, dict):
        return raw, NO_USAGE
    usage = usage_of(data) or NO_USAGE
    return encode_json(shape_result(data, model)), usage


class EventShaper:
    """Reshapes a server-sent event stream as it passes, whatever the chunk boundaries: complete
    events are rewritten, a partial one waits for the rest. The usage event's counts are kept in
    `usage`; with `hide_usage` (the gateway asked for it, the client did not) that event is not
    passed on."""

    def __init__(self, model: str, hide_usage: bool = False) -> None:
        self.model = model
        self.pending = b""
        self.events = 0
        self.usage: Usage | None = None
        self.hide_usage = hide_usage
        self.done = False  # the stream's last event, `data: [DONE]`, has passed

    def feed(self, chunk: bytes) -> bytes:
        data = self.pending + chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self.pending = data
            return b""
        self.pending = data[end + 2:]
        return b"".join(self._event(e) for e in data[:end].split(b"\n\n"))

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        return rest

    def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data: ") or event == b"data: [DONE]":
            self.done = self.done or event == b"data: [DONE]"
            return event + b"\n\n"
        self.events += 1
        try:
            data = decode_json(event[6:])
        except msgspec.DecodeError:
            return event + b"\n\n"
        if isinstance(data, dict):
            if (usage := usage_of(data)) is not None:
                self.usage = usage
                if self.hide_usage and not data.get("choices"):
                    return b""
            data = engine_error_body(data, 500) if "error" in data else shape_result(data, self.model)
        return b"data: " + encode_json(data) + b"\n\n"


def engine_error(status: int, raw: bytes) -> bytes:
    """An error body from the engine, in OpenAI's shape."""
    try:
        data = decode_json(raw)
    except msgspec.DecodeError:
        data = None
    return encode_json(engine_error_body(data if isinstance(data, dict) else {}, status))


def engine_error_body(data: dict[str, Any], status: int) -> dict[str, Any]:
    error = data.get("error")
    error = error if isinstance(error, dict) else {}
    message = error.get("message") if isinstance(error.get("message"), str) else ""
    param = error.get("param") if isinstance(error.get("param"), str) else None
    if status >= 500:
        # Server-side failures may carry internals (paths, stack fragments): the log keeps them.
        log.warning("the engine answered %s: %s", status, message[:2000])
        return error_body(f"the model server failed to answer (HTTP {status}); try again, and if it "
                          "persists the operator can find the cause in the engine's log",
                          status, "upstream_error")
    message, param = _readable(message, param)
    code = error.get("code") if isinstance(error.get("code"), str) else None
    if status == 404 and code is None:
        code = "not_found"
    return error_body(message or f"the model server refused the request (HTTP {status})", status, code, param)


def _readable(message: str, param: str | None) -> tuple[str, str | None]:
    """vLLM's request validation errors arrive as Python reprs of pydantic's error dicts, one per
    line after 'N validation errors:'; they become '<param>: <what is wrong>' sentences."""
    param = _param(param)
    lines = message.splitlines()
    if not lines or "validation error" not in lines[0]:
        return message, param
    problems = []
    for line in lines[1:]:
        try:
            problem = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError):
            continue
        if isinstance(problem, dict):
            where = _param(str(problem.get("loc", ""))) or "the request"
            problems.append(f"{where}: {problem.get('msg', 'invalid')}")
            param = param or _param(str(problem.get("loc", "")))
    if not problems:
        return message, param
    return "invalid request: " + "; ".join(problems), param


def _param(loc: str | None) -> str | None:
    """'body.messages.0.content' -> 'messages.0.content'."""
    if not loc:
        return None
    return loc.removeprefix("body.").removeprefix("body") or None
