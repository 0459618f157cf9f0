"""Which request fields the gateway accepts: OpenAI's, the engine's documented sampling extras,
and what the operator allows. Anything else is refused the way OpenAI refuses it, by name, so a
typo (`max_token`) or a field the engine would quietly ignore never passes unnoticed.

The OpenAI sets are the request properties of OpenAI's published API description for the two
operations (tests check them against the pinned copy in tests/conformance/). vLLM ignores the
OpenAI fields it does not implement (`store`, `metadata`, `service_tier`, ...), as OpenAI-
compatible servers do.
"""

from __future__ import annotations

from typing import Any

from airlock.config import Settings
from airlock.gateway.errors import BadRequest
from airlock.gateway.limits import BEHAVIOUR_FIELDS

CHAT_FIELDS = frozenset({
    "messages", "model", "modalities", "verbosity", "reasoning_effort", "max_completion_tokens",
    "frequency_penalty", "presence_penalty", "web_search_options", "top_logprobs", "response_format",
    "audio", "store", "stream", "stop", "logit_bias", "logprobs", "max_tokens", "n", "prediction",
    "seed", "stream_options", "tools", "tool_choice", "parallel_tool_calls", "function_call",
    "functions", "metadata", "temperature", "top_p", "user", "safety_identifier",
    "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "service_tier", "moderation",
})

COMPLETION_FIELDS = frozenset({
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
    "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix",
    "temperature", "top_p", "user",
})

# The engine's sampling parameters beyond OpenAI's (vLLM's "extra parameters"): they shape only
# this caller's own output, within the bounds limits.py checks (n, max tokens, grammar size).
SAMPLING_EXTRAS = frozenset({
    "top_k", "min_p", "repetition_penalty", "length_penalty", "use_beam_search", "ignore_eos",
    "min_tokens", "stop_token_ids", "include_stop_str_in_output", "skip_special_tokens",
    "spaces_between_special_tokens", "structured_outputs", "guided_json", "guided_regex",
    "guided_grammar", "guided_choice",
})

CHAT_ACCEPTED = CHAT_FIELDS | SAMPLING_EXTRAS
COMPLETION_ACCEPTED = COMPLETION_FIELDS | SAMPLING_EXTRAS


def refuse_unknown_fields(body: dict[str, Any], accepted: frozenset[str], settings: Settings) -> None:
    """BadRequest naming the first field that is neither accepted nor allowed by the operator.
    Fields that change how the server works are left to limits.check_completion_request, which
    refuses them with their own reason."""
    if settings.allow_unknown_request_fields:
        return
    unknown = body.keys() - accepted - BEHAVIOUR_FIELDS - settings.allowed_request_fields
    if unknown:
        name = min(unknown)
        raise BadRequest(f"Unrecognized request argument supplied: {name}", param=name)
