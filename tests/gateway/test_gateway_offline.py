"""The gateway without a model server: keys, body checks, model lookup, fast 503s, probes, metrics.

vLLM's port here is closed, so anything that would reach it must come back as 503 at once.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from airlock.meta.db import now


def client(gw, key=None, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key or gw.key, max_retries=0, **kw)


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code
    return err


def test_healthz_answers_without_a_key(offline_gateway):
    assert httpx.get(f"{offline_gateway.url}/healthz").json() == {"status": "ok"}


def test_readyz_is_503_with_each_component_when_the_engine_is_down(offline_gateway):
    resp = httpx.get(f"{offline_gateway.url}/readyz")
    assert resp.status_code == 503
    body = resp.json()
    assert body["status"] == "not ready"
    assert body["components"]["gateway"] == "ready"
    assert body["components"]["engine"].startswith("unreachable")
    assert body["components"]["worker"] == "down"


def test_missing_and_wrong_keys_are_401(offline_gateway):
    with pytest.raises(openai.AuthenticationError) as info:
        client(offline_gateway, key="ak-00000000-wrong").models.list()
    assert info.value.status_code == 401
    assert "invalid API key" in info.value.message
    resp = httpx.post(f"{offline_gateway.url}/v1/chat/completions", json={"model": "x", "messages": []})
    err = assert_openai_error(resp, 401, "invalid_api_key")
    assert err["type"] == "authentication_error"
    assert resp.headers["www-authenticate"] == "Bearer"


def test_revoked_key_is_refused_on_the_next_request(offline_gateway):
    from airlock.access.keys import create_key, revoke_key

    key_id, secret = create_key(offline_gateway.meta, "short-lived")
    assert client(offline_gateway, key=secret).models.list().data
    revoke_key(offline_gateway.meta, key_id)
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        client(offline_gateway, key=secret).models.list()


def test_models_lists_the_base_model_and_every_alias(offline_gateway):
    with offline_gateway.meta.write() as db:
        db["aliases"].insert({"name": "support-bot", "model_id": "adp-1", "lora_name": "adp-1",
                              "base_model": offline_gateway.settings.serve_base_model,
                              "updated_at": now()})
    models = client(offline_gateway).models.list().data
    assert [m.id for m in models] == [offline_gateway.settings.serve_base_model, "support-bot"]
    assert {m.owned_by for m in models} == {"airlock"}


@pytest.mark.parametrize("path, body, param, fragment", [
    ("/v1/chat/completions", b"{not json", None, "not valid JSON"),
    ("/v1/chat/completions", b"[1, 2]", None, "JSON object"),
    ("/v1/chat/completions", b'{"messages": []}', "model", "model parameter"),
    ("/v1/chat/completions", b'{"model": "m"}', "messages", "messages parameter"),
    ("/v1/chat/completions", b'{"model": "m", "messages": "hi"}', "messages", "must be a list"),
    ("/v1/completions", b'{"model": "m"}', "prompt", "prompt parameter"),
])
def test_bad_bodies_are_400_with_the_field_named(offline_gateway, path, body, param, fragment):
    resp = httpx.post(f"{offline_gateway.url}{path}", content=body,
                      headers={"Authorization": f"Bearer {offline_gateway.key}"})
    err = assert_openai_error(resp, 400, "invalid_request_error")
    assert err["param"] == param and fragment in err["message"]
    assert err["type"] == "invalid_request_error"


def test_unknown_model_is_404(offline_gateway):
    with pytest.raises(openai.NotFoundError) as info:
        client(offline_gateway).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    err = info.value.body
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "no-such-model" in err["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_vllm_down_is_503_in_under_a_second(offline_gateway, stream):
    base = offline_gateway.settings.serve_base_model
    started = time.perf_counter()
    with pytest.raises(openai.InternalServerError) as info:
        client(offline_gateway).chat.completions.create(
            model=base, messages=[{"role": "user", "content": "hi"}], stream=stream)
    assert time.perf_counter() - started < 1.0
    assert info.value.status_code == 503
    assert info.value.body["code"] == "service_unavailable"


def test_unknown_routes_and_methods_keep_the_openai_error_shape(offline_gateway):
    assert_openai_error(httpx.get(f"{offline_gateway.url}/nope"), 404, "not_found")
    assert_openai_error(httpx.put(f"{offline_gateway.url}/healthz"), 405, "method_not_allowed")


def test_metrics_count_requests_by_route_and_status(offline_gateway):
    httpx.get(f"{offline_gateway.url}/healthz")
    httpx.get(f"{offline_gateway.url}/v1/models")
    text = httpx.get(f"{offline_gateway.url}/metrics",
                     headers={"Authorization": f"Bearer {offline_gateway.key}"}).text
    assert 'airlock_gateway_requests_total{route="/healthz",status="200"} 1.0' in text
    assert 'airlock_gateway_requests_total{route="/v1/models",status="401"} 1.0' in text
    assert "airlock_gateway_upstream_seconds_count" not in text  # no engine has been asked yet
    # The engine is down: its figures are missing, and it says so, with the engine's name.
    assert f'airlock_engine_up{{engine="{offline_gateway.settings.serve_base_model}-0"}} 0.0' in text
