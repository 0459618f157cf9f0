"""Conformance to OpenAI's published API: requests generated from OpenAI's own OpenAPI document
(openai-openapi.yaml beside this file), sent to the real gateway in front of the real vLLM.

Every answer must be: not a 5xx; when 2xx, valid against OpenAI's response schema (each event of
a stream too); when 4xx, an error in OpenAI's shape (openai_checks.py has the rules it adds).

Generation is bounded so that the suite takes minutes on a small CPU host: a fixed seed, a fixed
number of requests per operation and short completions. The answers do not steer generation, so
a run's requests depend on the code alone (Hypothesis also draws on string constants it finds in
the repository's modules): the same code sends the same requests on every run.
"""

from __future__ import annotations

import json

import httpx
import hypothesis.strategies as st
import pytest
import schemathesis
from openai_checks import null_is_default, openai_error_shape, served_model_found
from openai_spec import STREAM_DATA, load_spec, prepare
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from vllm_fixtures import REFERENCE_MODEL

SPEC = prepare(load_spec())
MAX_TOKENS = 16  # per request: every example costs a generation
# One request in this many keeps the model name the generator drew (nearly always unknown: a
# 404); the others name the served model, so that most requests reach the engine.
OTHER_MODEL_ONE_IN = 10


@schemathesis.deserializer(STREAM_DATA)
def stream_data(ctx, response):
    if response.content.strip() == b"[DONE]":
        raise NotImplementedError  # the closing sentinel: no chunk, nothing to validate
    return response.json()


def _served_model_mostly(drawn: str):
    return st.integers(0, OTHER_MODEL_ONE_IN - 1).map(
        lambda i: drawn if i == OTHER_MODEL_ONE_IN - 1 else REFERENCE_MODEL)


def _bounded(body: dict, path: str) -> dict:
    """The body with at most MAX_TOKENS to generate: larger caps cost the engine seconds each and
    test nothing new, and with none vLLM generates up to the model's context length. A null cap
    stays null (the document allows it) where the other field can bound the completion."""
    fields = ("max_tokens", "max_completion_tokens") if path == "/chat/completions" else ("max_tokens",)
    body = dict(body)
    for field in fields:
        if type(body.get(field)) is int and body[field] > MAX_TOKENS:
            body[field] = MAX_TOKENS
    if all(body.get(field) is None for field in fields):
        free = [field for field in fields if field not in body]
        if free:
            body[free[0]] = MAX_TOKENS
    return body


def flatmap_body(ctx, body):
    """Bounded, naming the served model most of the time, and streamed about half the time where
    the generator left `stream` out (it rarely draws `true` on its own)."""
    if not isinstance(body, dict):
        return st.just(body)
    body = _bounded(body, ctx.operation.path)
    drawn = body.get("model")
    model = _served_model_mostly(drawn) if isinstance(drawn, str) else st.just(drawn)
    stream = st.booleans() if "stream" not in body else st.just(None)
    return st.tuples(model, stream).map(
        lambda choice: body | {"model": choice[0]} | ({"stream": True} if choice[1] else {}))


def flatmap_path_parameters(ctx, parameters):
    if not isinstance(parameters, dict) or not isinstance(parameters.get("model"), str):
        return st.just(parameters)
    return _served_model_mostly(parameters["model"]).map(lambda model: parameters | {"model": model})


CHECKS = [not_a_server_error, response_schema_conformance, openai_error_shape, served_model_found(REFERENCE_MODEL),
          null_is_default]


def _schema(mode: str, max_examples: int):
    config = schemathesis.Config.from_dict({
        "seed": 20260821,
        "generation": {"mode": mode, "max-examples": max_examples, "deterministic": True,
                       "database": "none", "unique-inputs": True,
                       # The key is the suite's to send; a generated one is only ever refused.
                       "with-security-parameters": False},
        # The coverage and examples phases add hundreds of requests with no bound of their own,
        # and fill every optional field at once (a body no server accepts).
        "phases": {"examples": {"enabled": False}, "coverage": {"enabled": False},
                   "stateful": {"enabled": False},
                   "fuzzing": {"error-feedback": {"enabled": False},
                               "extra-data-sources": {"responses": False}}},
        "suppress-health-check": ["all"],
    })
    schema = schemathesis.openapi.from_dict(SPEC, config=config)
    schema.hook(flatmap_body)
    schema.hook(flatmap_path_parameters)
    return schema


@pytest.fixture
def http(live_gateway):
    with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {live_gateway.key}"}) as client:
        yield client


# Separate budgets, so that neither mode crowds the other out: requests the document allows
# (most of them), and requests it does not, which must be refused in OpenAI's error shape. The
# GET operations take no input a request could get wrong.
valid = _schema("positive", 60)
invalid = _schema("negative", 20).include(method="POST")


def _send_and_check(case, http, gateway) -> None:
    # Sent with httpx rather than schemathesis' own transport (requests): that one reads an event
    # stream with urllib3's read1(), which here took a pause between chunks for the stream's end,
    # and half a stream (or none of it) was validated.
    sent = case.as_transport_kwargs(base_url=gateway.url + "/v1")
    body = json.dumps(sent["json"]).encode() if "json" in sent else sent.get("data")
    response = http.request(sent["method"], sent["url"], params=sent.get("params") or None,
                            headers=sent["headers"], content=body)
    case.validate_response(response, checks=CHECKS)


@pytest.mark.vllm
@pytest.mark.slow
@valid.parametrize()
def test_valid_requests(case, http, live_gateway, vllm_server):
    assert vllm_server.served_name == REFERENCE_MODEL
    _send_and_check(case, http, live_gateway)


@pytest.mark.vllm
@pytest.mark.slow
@invalid.parametrize()
def test_invalid_requests(case, http, live_gateway):
    _send_and_check(case, http, live_gateway)


# Features a few dozen generated requests seldom reach, sent as written (with the served model
# and MAX_TOKENS): the answers go through the same checks.
_HI = [{"role": "user", "content": "Hello"}]
FEATURES = {
    "chat-logprobs": ("/chat/completions", {"messages": _HI, "logprobs": True, "top_logprobs": 2}),
    "chat-stream-usage-logprobs": ("/chat/completions", {"messages": _HI, "stream": True, "logprobs": True,
                                                         "top_logprobs": 1, "stream_options": {"include_usage": True}}),
    "chat-n-stop-seed": ("/chat/completions", {"messages": _HI, "n": 2, "stop": ["."], "seed": 7}),
    "chat-json-object": ("/chat/completions", {"messages": _HI, "response_format": {"type": "json_object"}}),
    "completion-echo-logprobs": ("/completions", {"prompt": "Once upon", "echo": True, "logprobs": 2}),
    "completion-stream-usage": ("/completions", {"prompt": "Once upon", "stream": True,
                                                 "stream_options": {"include_usage": True}}),
    "completion-n-best-of": ("/completions", {"prompt": ["Once", "upon"], "n": 2, "best_of": 2}),
}


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("feature", FEATURES)
def test_features(feature, http, live_gateway):
    path, body = FEATURES[feature]
    case = valid[path]["POST"].Case(body={"model": REFERENCE_MODEL, "max_tokens": MAX_TOKENS} | body)
    _send_and_check(case, http, live_gateway)


# Requests that name no max tokens at all: the gateway fills in its default (AIRLOCK_DEFAULT_MAX_TOKENS).
UNCAPPED = {
    "chat-no-max-tokens": ("/chat/completions", {"messages": _HI}),
    "completion-no-max-tokens-stream": ("/completions", {"prompt": "Once upon", "stream": True}),
}


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("feature", UNCAPPED)
def test_an_omitted_max_tokens_still_conforms(feature, http, live_gateway):
    path, body = UNCAPPED[feature]
    _send_and_check(valid[path]["POST"].Case(body={"model": REFERENCE_MODEL} | body), http, live_gateway)
