"""Bounded requests: every request the gateway accepts has a size, and every completion a cost.

The front bounds headers for every request, and the OpenAI API reads its bodies with a cap
(front.read_body). `RequestLimits`, a pure ASGI middleware around the FastAPI app, does the same
for /api, whose uploads may be streamed: a declared Content-Length over the cap is answered 413
without reading a byte of it, and a chunked body is counted as it arrives and answered 413 the
moment it crosses the cap. `check_completion_request` bounds
what one completion may cost vLLM (n, max tokens, prompt length, grammar sizes) and refuses
the fields that change how the server works rather than what it completes; `output_budget`
gives every completion a max_tokens (the key's default where it names none), bounds
n x max_tokens, and says how many tokens to reserve from the key's budget. Every refusal says
what the cap is and which AIRLOCK_ setting changes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from airlock.config import Settings
from airlock.errors import InvalidInput, TooLarge
from airlock.gateway.errors import BadRequest, error_response

# vLLM 0.32's request fields that go beyond sampling one completion. Refused unless the
# operator names them in AIRLOCK_ALLOW_REQUEST_FIELDS:
# - prompt construction the operator chose for the served model: chat_template (Jinja the
#   server renders), chat_template_kwargs, add_generation_prompt, continue_final_message,
#   add_special_tokens, documents, truncate_prompt_tokens;
# - multimodal processing and media loading: mm_processor_kwargs, media_io_kwargs;
# - raw tensors the server deserialises: prompt_embeds;
# - scheduling, caching and identity shared with other callers: priority (jump the queue),
#   cache_salt (prefix-cache partitioning is the operator's choice), request_id and session_id
#   (engine-side ids a caller could collide with or forge), kv_transfer_params,
#   ec_transfer_params (disaggregated serving), vllm_xargs (custom extensions);
# - per-step vocabulary work with no bound of its own: logits_processors, allowed_token_ids,
#   bad_words;
# - internals beyond the completion: return_tokens_as_token_ids, return_token_ids,
#   return_prompt_text, prompt_logprobs (full-vocabulary logprobs for every prompt token),
#   routed_experts_prompt_start.
# Allowed, because they only shape this caller's own output within the bounds checked here:
# top_k, min_p, repetition_penalty, length_penalty, use_beam_search (its width is n), ignore_eos
# and min_tokens (bounded by max tokens), stop_token_ids, include_stop_str_in_output,
# skip_special_tokens, spaces_between_special_tokens, truncation_side, logprob_token_ids,
# watermarking, echo, repetition_detection, stream_interval, thinking_token_budget,
# include_reasoning, reasoning_effort; and the render-only fields vLLM ignores on generation
# (return_token_offsets, mm_payload, return_mm_kwargs).
BEHAVIOUR_FIELDS = frozenset({
    "chat_template", "chat_template_kwargs", "add_generation_prompt", "continue_final_message",
    "add_special_tokens", "documents", "truncate_prompt_tokens", "mm_processor_kwargs",
    "media_io_kwargs", "prompt_embeds", "priority", "cache_salt", "request_id", "session_id",
    "kv_transfer_params", "ec_transfer_params", "vllm_xargs", "logits_processors",
    "allowed_token_ids", "bad_words", "return_tokens_as_token_ids", "return_token_ids",
    "return_prompt_text", "prompt_logprobs", "routed_experts_prompt_start",
})

# Grammars vLLM compiles before the first token: their cost grows with their size. The guided_*
# names are ignored by vLLM 0.32 but still arrive from older clients, so they are bounded too.
# Tools are grammars as well: a named, required or strict call is decoded against their schemas.
GUIDED_FIELDS = ("structured_outputs", "response_format", "guided_json", "guided_regex",
                 "guided_grammar", "guided_choice", "tools", "functions")

CHAT_PATH = "/v1/chat/completions"
MAX_LOGPROBS = 20  # vLLM's --max-logprobs default, which airlock does not change
UPLOAD_PATH = "/api/datasets"


def check_completion_request(body: dict[str, Any], path: str, settings: Settings) -> None:
    """Raise BadRequest naming the field when a completion request is over a configured bound.

    Only what is present is looked at, and only grammars are serialised, so a normal request
    costs a few microseconds here; vLLM still validates types and everything else.
    """
    for param in ("n", "best_of"):
        _check_int(body, param, 1, settings.max_n, "AIRLOCK_MAX_N")
    # At least 1: vLLM generates at least one token, and refuses 0 naming max_tokens even where the
    # caller sent max_completion_tokens; refused here, the error names the field the caller sent.
    for param in ("max_tokens", "max_completion_tokens"):
        _check_int(body, param, 1, settings.max_completion_tokens, "AIRLOCK_MAX_COMPLETION_TOKENS")
    # vLLM reads -1 as the whole vocabulary's logprobs at every token, and refuses more than its
    # --max-logprobs only once a stream has begun (a 500 event mid-stream): bounded here first.
    # A chat request's `logprobs` is a yes/no; the count is its `top_logprobs`.
    for param in ("top_logprobs",) if path == CHAT_PATH else ("logprobs",):
        _check_int(body, param, 0, MAX_LOGPROBS, "the engine's --max-logprobs")

    if path == CHAT_PATH and MEDIA_CONTENT not in settings.allowed_request_fields:
        _refuse_media_parts(body.get("messages"))
    param, chars = ("messages", _message_chars(body.get("messages"))) if path == CHAT_PATH \
        else ("prompt", _prompt_chars(body.get("prompt")))
    if chars > settings.max_prompt_chars:
        raise BadRequest(f"{param} holds {chars} characters; at most {settings.max_prompt_chars} "
                         "are accepted (AIRLOCK_MAX_PROMPT_CHARS)", param=param)

    if present := body.keys() & BEHAVIOUR_FIELDS:
        refused = sorted(f for f in present - settings.allowed_request_fields if body[f] is not None)
        if refused:
            raise BadRequest(
                f"{', '.join(refused)}: changes how the server builds or runs requests and is not "
                "accepted here; the operator can allow it by naming it in AIRLOCK_ALLOW_REQUEST_FIELDS",
                param=refused[0])

    for field in GUIDED_FIELDS:
        value = body.get(field)
        if value is None:
            continue
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
        if size > settings.max_guided_bytes:
            raise BadRequest(f"{field} is {size} bytes of JSON; at most {settings.max_guided_bytes} "
                             "are accepted (AIRLOCK_MAX_GUIDED_BYTES)", param=field)


# A token is about four characters of English (OpenAI's rule of thumb): the prompt's share of a
# reservation is estimated so, and settled with the engine's count when the answer comes.
_CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Budget:
    """What a completion may cost: its prompt's estimated tokens and its most output tokens."""

    prompt: int
    output: int

    @property
    def total(self) -> int:
        return self.prompt + self.output


def output_budget(body: dict[str, Any], path: str, key: dict[str, Any], settings: Settings) -> Budget:
    """Fill in max tokens where the request names none (the key's default, else
    AIRLOCK_DEFAULT_MAX_TOKENS, so nothing generates to the end of the context), and refuse
    n x max_tokens over AIRLOCK_MAX_COMPLETION_TOKENS. `body` must have passed
    check_completion_request. ignore_eos and min_tokens are bounded by the same max tokens."""
    chat = path == CHAT_PATH
    width = max(body.get("n") or 1, body.get("best_of") or 1)  # sequences generated at once
    cap = settings.max_completion_tokens
    asked = body.get("max_completion_tokens") if chat else None
    asked = body.get("max_tokens") if asked is None else asked
    if asked is None:
        # Not the caller's choice, so shrunk to fit n under the cap rather than refused; never
        # more than the engine's context, which it would refuse.
        default = key.get("max_tokens") or settings.default_max_tokens
        asked = max(1, min(default, settings.vllm_max_model_len, cap // width))
        body["max_completion_tokens" if chat else "max_tokens"] = asked
    elif width * asked > cap:
        param = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        raise BadRequest(f"n x max_tokens is {width} x {asked} = {width * asked} tokens; at most {cap} are "
                         "accepted in one request (AIRLOCK_MAX_COMPLETION_TOKENS)", param=param)
    chars = _message_chars(body.get("messages")) if chat else _prompt_chars(body.get("prompt"))
    return Budget(prompt=chars // _CHARS_PER_TOKEN + 1, output=width * asked)


def _check_int(body: dict[str, Any], param: str, low: int, high: int, setting: str) -> None:
    value = body.get(param)
    if value is None:
        return
    # bool is an int subclass, and 1e9 arrives as a float: neither is a count.
    if type(value) is not int:
        raise BadRequest(f"{param} must be an integer; got {json.dumps(value)[:40]}", param=param)
    if value < low:
        raise BadRequest(f"{param} must be at least {low}; got {value}", param=param)
    if value > high:
        raise BadRequest(f"{param} is {value}; at most {high} is accepted ({setting})", param=param)


# Image, audio, video and file parts name URLs the engine would fetch from inside the network
# (or carry media a text model cannot read): refused unless this name is allowed.
MEDIA_CONTENT = "media_content"


def _refuse_media_parts(messages: Any) -> None:
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", None):
                raise BadRequest(
                    f"messages[{i}]: content part type {kind!r} is not accepted: the served models read "
                    f"text, and a media URL would make the engine fetch it; the operator can allow "
                    f"media parts by naming {MEDIA_CONTENT} in AIRLOCK_ALLOW_REQUEST_FIELDS",
                    param="messages")


def _message_chars(messages: Any) -> int:
    """Characters of every message's content: a string, or the text of its content parts."""
    total = 0
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(p["text"]) for p in content
                         if isinstance(p, dict) and isinstance(p.get("text"), str))
    return total


def _prompt_chars(prompt: Any) -> int:
    """Characters of a prompt: a string, a list of strings, or token ids (one each, a token being
    at least a character, so the bound holds for every form)."""
    if isinstance(prompt, str):
        return len(prompt)
    if not isinstance(prompt, list):
        return 0
    return sum(len(p) if isinstance(p, (str, list)) else 1 for p in prompt)


class RequestLimits:
    """Refuse oversized request bodies (413) before the app sees them."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.settings
        head = scope["airlock.head"]  # read by the front, which bounds the headers
        declared, chunked = head.content_length, head.chunked
        if scope["method"] == "POST" and scope["path"] == UPLOAD_PATH:
            cap, setting = settings.max_upload_bytes, "AIRLOCK_MAX_UPLOAD_BYTES"
        else:
            cap, setting = settings.max_body_bytes, "AIRLOCK_MAX_BODY_BYTES"
        if declared is not None and declared > cap:
            await _refuse(scope, receive, send, TooLarge(
                f"the request body is {declared} bytes; at most {cap} are accepted ({setting})"))
        elif chunked:
            await self._counted(scope, receive, send, cap, setting)
        else:
            # No body, or one the server frames by its Content-Length: it cannot grow past it.
            await self.app(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, cap: int, setting: str) -> None:
        """A body without a length (chunked): count it, and answer 413 once it crosses the cap,
        whatever the app then makes of the body it could not read whole."""
        message = f"the request body is over {cap} bytes, the most accepted ({setting})"
        received = 0
        over = started = ours = False

        async def counted_receive() -> Message:
            nonlocal received, over
            if not over:
                event = await receive()
                if event["type"] != "http.request":
                    return event
                received += len(event.get("body", b""))
                if received <= cap:
                    return event
                over = True
            raise TooLarge(message)

        async def guarded_send(event: Message) -> None:
            nonlocal started, ours
            if event["type"] == "http.response.start":
                started = True
                if over:
                    ours = True
                    await _refuse(scope, receive, send, TooLarge(message))
                    return
            elif ours:
                return
            await send(event)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            # Past the cap, whatever broke in the app broke on the cut-off body: no traceback
            # for the log, and the caller still gets its 413.
            if not over:
                raise
            if not started:
                await _refuse(scope, receive, send, TooLarge(message))


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: InvalidInput | TooLarge) -> None:
    response = error_response(str(exc), exc.http_status, exc.code, getattr(exc, "param", None))
    await response(scope, receive, send)
