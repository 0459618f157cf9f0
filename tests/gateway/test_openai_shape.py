"""OpenAI's shape at the gateway: routes, request ids, request fields, response bodies and the
engine's errors. The engine-free parts run against a gateway whose engine is down (a request
that passes every check then comes back 503), the rest against the real engine."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from airlock.gateway.shape import EventShaper, engine_error, shape_body

VLLM_CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "adp-0123456789ab",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": None,
                                         "annotations": None, "audio": None, "function_call": None,
                                         "tool_calls": [], "reasoning": None},
                 "logprobs": {"content": [{"token": "hi", "logprob": -0.1, "bytes": [104, 105],
                                           "top_logprobs": []}]},
                 "finish_reason": "stop", "stop_reason": None, "token_ids": None}],
    "service_tier": None, "system_fingerprint": None, "prompt_logprobs": None, "kv_transfer_params": None,
    "usage": {"prompt_tokens": 3, "total_tokens": 4, "completion_tokens": 1, "prompt_tokens_details": None},
}


def call(gw, method: str, path: str, key: str | None = None, **kw) -> httpx.Response:
    return httpx.request(method, f"{gw.url}{path}", headers={"Authorization": f"Bearer {key or gw.key}",
                                                              **kw.pop("headers", {})}, timeout=30, **kw)


def error_of(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] is None or isinstance(error["code"], str)
    return error


# --- unit: bodies, streams and errors ------------------------------------------------------------

def test_a_chat_body_gets_the_asked_name_and_loses_the_nulls_the_schema_forbids():
    raw, usage = shape_body(json.dumps(VLLM_CHAT).encode(), "support")
    body = json.loads(raw)
    assert usage == (3, 1) and usage.total == 4 and body["model"] == "support"
    message = body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "hi", "refusal": None, "tool_calls": []}
    assert body["choices"][0]["logprobs"]["refusal"] is None
    assert "stop_reason" not in body["choices"][0] and body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 4, "completion_tokens": 1}
    assert not {"service_tier", "system_fingerprint", "prompt_logprobs", "kv_transfer_params"} & body.keys()


def test_a_stream_is_reshaped_whatever_its_chunk_boundaries():
    chunks = [{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "adp-x",
               "choices": [{"index": 0, "delta": {"content": word, "reasoning": None}, "logprobs": None,
                            "finish_reason": None}]} for word in ("Hel", "lo", " there")]
    stream = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    whole = EventShaper("support").feed(stream)
    for cut in range(1, len(stream)):
        shaper = EventShaper("support")
        assert shaper.feed(stream[:cut]) + shaper.feed(stream[cut:]) + shaper.flush() == whole
    events = whole.split(b"\n\n")
    assert events[-2] == b"data: [DONE]" and events[-1] == b""
    for event in events[:-2]:
        chunk = json.loads(event.removeprefix(b"data: "))
        assert chunk["model"] == "support"
        assert chunk["choices"][0]["delta"] == {"content": chunk["choices"][0]["delta"]["content"]}
        assert chunk["choices"][0]["finish_reason"] is None and chunk["choices"][0]["logprobs"] is None


def test_an_engine_validation_error_becomes_one_readable_message_naming_the_parameter():
    vllm = {"error": {"message": "2 validation errors:\n  {'type': 'missing', 'loc': 'body.messages', "
                                 "'msg': 'Field required', 'input': {'model': 'x'}}\n  {'type': 'int_parsing', "
                                 "'loc': 'body.top_k', 'msg': 'Input should be a valid integer', 'input': 'a'}",
                      "type": "Bad Request", "param": "body.messages", "code": 400}}
    error = json.loads(engine_error(400, json.dumps(vllm).encode()))["error"]
    assert error == {"message": "invalid request: messages: Field required; top_k: Input should be a valid integer",
                     "type": "invalid_request_error", "param": "messages", "code": None}


def test_an_engine_failure_says_what_happened_without_its_internals():
    raw = json.dumps({"error": {"message": "Traceback ... /opt/secret/path.py", "type": "InternalServerError",
                                "param": None, "code": 500}}).encode()
    error = json.loads(engine_error(500, raw))["error"]
    assert error["type"] == "server_error" and error["code"] == "upstream_error"
    assert "/opt" not in error["message"] and "HTTP 500" in error["message"]
    assert json.loads(engine_error(400, b"not json"))["error"]["message"]


# --- the gateway, engine down ----------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/embeddings"), ("GET", "/v1/chat/completions"),
                                               ("DELETE", "/v1/models/x"), ("POST", "/v1"), ("GET", "/v1/files")])
def test_unknown_routes_get_openais_invalid_url(offline_gateway, method, path):
    error = error_of(call(offline_gateway, method, path), 404)
    assert error["message"] == f"Invalid URL ({method} {path})"
    assert error["type"] == "invalid_request_error"


def test_every_response_has_a_request_id_and_a_clients_own_is_echoed(offline_gateway):
    gw = offline_gateway
    for resp in (call(gw, "GET", "/v1/models"), call(gw, "GET", "/v1/nothing"), httpx.get(f"{gw.url}/healthz"),
                 call(gw, "GET", "/api/runs"), call(gw, "GET", "/v1/models", key="ak-1-2")):
        assert resp.headers["x-request-id"].startswith("req_")
    ids = {call(gw, "GET", "/v1/models").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    assert call(gw, "GET", "/v1/models", headers={"X-Request-Id": "app-42"}).headers["x-request-id"] == "app-42"
    # Ids that would corrupt a log line are replaced, not echoed.
    assert call(gw, "GET", "/v1/models", headers={"X-Request-Id": "a b"}).headers["x-request-id"].startswith("req_")


def test_get_one_model_within_the_keys_scope(offline_gateway):
    gw = offline_gateway
    base = gw.settings.serve_base_model
    model = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0).models.retrieve(base)
    assert (model.id, model.object, model.owned_by) == (base, "model", "airlock")
    assert error_of(call(gw, "GET", "/v1/models/no-such-model"), 404)["code"] == "model_not_found"
    scoped = gw.new_key("inference", models=["support"])
    missing = error_of(call(gw, "GET", f"/v1/models/{base}", key=scoped), 404)
    assert missing == error_of(call(gw, "GET", "/v1/models/no-such-model", key=scoped), 404) | {
        "message": missing["message"]} and base in missing["message"]


@pytest.mark.parametrize("field", ["max_token", "chat_templat", "foo"])
def test_an_unknown_request_field_is_refused_by_name(offline_gateway, field):
    gw = offline_gateway
    body = {"model": gw.settings.serve_base_model, "messages": [{"role": "user", "content": "hi"}], field: 1}
    error = error_of(call(gw, "POST", "/v1/chat/completions", json=body), 400)
    assert error["message"] == f"Unrecognized request argument supplied: {field}"
    assert error["param"] == field


def test_openai_fields_sampling_extras_and_a_null_prompt_pass_the_gateways_checks(offline_gateway):
    """Engine down: a request the gateway accepted comes back 503 from the proxy."""
    gw = offline_gateway
    base = gw.settings.serve_base_model
    chat = {"model": base, "messages": [{"role": "user", "content": "hi"}], "top_k": 5, "min_p": 0.1,
            "repetition_penalty": 1.1, "store": False, "metadata": {"app": "x"}, "seed": 1,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "auto", "parallel_tool_calls": True, "stream_options": None}
    for path, body in (("/v1/chat/completions", chat),
                       ("/v1/completions", {"model": base, "prompt": None, "top_k": 5, "suffix": None}),
                       ("/v1/completions", {"model": base, "prompt": "hi", "echo": True, "best_of": 1})):
        assert error_of(call(gw, "POST", path, json=body), 503)["code"] == "service_unavailable"


def test_the_operator_can_let_unknown_fields_through(tmp_path, start_gateway):
    from vllm_fixtures import free_port

    from airlock.config import Settings

    settings = Settings(home=tmp_path / "home", gateway_port=free_port(), vllm_port=free_port(),
                        allow_unknown_request_fields=True)
    with start_gateway(settings) as gw:
        body = {"model": settings.serve_base_model, "messages": [{"role": "user", "content": "hi"}], "foo": 1}
        assert call(gw, "POST", "/v1/chat/completions", json=body).status_code == 503
        # Fields that change how the server works still need naming one by one.
        body = body | {"chat_template": "{{ 1 }}"}
        assert "AIRLOCK_ALLOW_REQUEST_FIELDS" in error_of(call(gw, "POST", "/v1/chat/completions", json=body),
                                                          400)["message"]


def _spec_properties(schemas: dict, name: str) -> set[str]:
    schema = schemas[name]
    found = set()
    for part in schema.get("allOf", [schema]):
        if "$ref" in part:
            found |= _spec_properties(schemas, part["$ref"].rsplit("/", 1)[-1])
        found |= set(part.get("properties", {}))
    return found


def test_the_accepted_fields_are_exactly_openais_request_properties():
    """Against the pinned copy of OpenAI's API description the conformance suite uses."""
    from pathlib import Path

    import yaml

    from airlock.gateway.fields import CHAT_FIELDS, COMPLETION_FIELDS

    spec = yaml.safe_load((Path(__file__).parents[1] / "conformance" / "openai-openapi.yaml").read_text())
    schemas = spec["components"]["schemas"]
    assert _spec_properties(schemas, "CreateChatCompletionRequest") == CHAT_FIELDS
    assert _spec_properties(schemas, "CreateCompletionRequest") == COMPLETION_FIELDS
