"""An inference key that asks for output without end: no max_tokens (or a null prompt and no
max_tokens, as a fuzzer sent), ignore_eos, n at its maximum, or a budget spent by requests
running at once. The gateway gives every completion a max_tokens (the key's default, else
AIRLOCK_DEFAULT_MAX_TOKENS), caps n x max_tokens, and reserves the key's token budget before the
request reaches the engine, settling it with the answer's real usage.

Against the real engine (the session's vLLM), through the official openai client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from gateway_support import Gateway, gateway_settings, run_gateway

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

CAP = 64  # AIRLOCK_MAX_COMPLETION_TOKENS here: n x max_tokens at most this
DEFAULT = 6  # AIRLOCK_DEFAULT_MAX_TOKENS here
HI = [{"role": "user", "content": "Say something."}]


@pytest.fixture
def capped(tmp_path: Path, vllm_server) -> Iterator[Gateway]:
    yield from run_gateway(gateway_settings(tmp_path / "home", engine_home=vllm_server.settings.engine_dir,
                                            serve_base_model=vllm_server.served_name,
                                            max_completion_tokens=CAP, default_max_tokens=DEFAULT))


def client(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=120)


def tpm_level(gw: Gateway, key: str) -> float:
    """What is left of the key's tokens per minute now (the gateway's own bucket)."""
    key_id = key.split("-")[1]
    tpm = gw.meta.one("SELECT tpm FROM api_keys WHERE id = ?", (key_id,))["tpm"]
    return gw.app.state.limiter._level(key_id, "tpm", tpm, time.time())


def test_no_max_tokens_means_the_keys_default_even_with_ignore_eos_and_a_null_prompt(capped):
    """Had it worked, these requests would generate to the end of the context (512 tokens per
    sequence here, the whole context of a production model elsewhere)."""
    gw = capped
    own = client(gw, gw.new_key("inference", max_tokens=8))
    answer = own.completions.create(model="airlock-tiny", prompt=None, n=2, extra_body={"ignore_eos": True})
    assert [c.finish_reason for c in answer.choices] == ["length", "length"]
    assert answer.usage.completion_tokens == 2 * 8
    chat = own.chat.completions.create(model="airlock-tiny", messages=HI, extra_body={"ignore_eos": True})
    assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 8
    # A key without its own default gets AIRLOCK_DEFAULT_MAX_TOKENS.
    plain = client(gw, gw.new_key("inference"))
    answer = plain.completions.create(model="airlock-tiny", prompt="Once", extra_body={"ignore_eos": True})
    assert answer.usage.completion_tokens == DEFAULT


def test_n_times_max_tokens_over_the_cap_is_400_naming_the_numbers(capped):
    """Had it worked, n=8 with max_tokens at the cap would generate 8 x the cap in one request."""
    app = client(capped, capped.new_key("inference"))
    with pytest.raises(openai.BadRequestError) as refused:
        app.completions.create(model="airlock-tiny", prompt="Once", n=8, max_tokens=16)
    message = refused.value.body["message"]
    assert "8 x 16 = 128" in message and f"at most {CAP}" in message and "AIRLOCK_MAX_COMPLETION_TOKENS" in message
    assert refused.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError, match="8 x 9 = 72"):
        app.chat.completions.create(model="airlock-tiny", messages=HI, n=8, max_completion_tokens=9)
    # Left to the default, n=8 shrinks each sequence to fit the cap instead: 8 x 8 = 64.
    answer = client(capped, capped.new_key("inference", max_tokens=100)).completions.create(
        model="airlock-tiny", prompt="Once", n=8, extra_body={"ignore_eos": True})
    assert answer.usage.completion_tokens == CAP


def test_the_budget_is_reserved_before_the_engine_so_concurrent_requests_cannot_overspend(capped):
    """Had tokens been charged only after the answer, a second request sent while the first
    streams would pass too, and the key would spend twice its budget."""
    gw = capped
    key = gw.new_key("inference", tpm=60)
    headers = {"Authorization": f"Bearer {key}"}
    first = {"model": "airlock-tiny", "prompt": "Once", "max_tokens": 40, "stream": True, "ignore_eos": True}
    with httpx.Client(timeout=120) as http, http.stream("POST", f"{gw.url}/v1/completions", json=first,
                                                        headers=headers) as streaming:
        assert streaming.status_code == 200
        lines = streaming.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # the engine is generating
        second = http.post(f"{gw.url}/v1/completions", headers=headers,
                           json={"model": "airlock-tiny", "prompt": "Once", "max_tokens": 40})
        assert second.status_code == 429, second.text
        assert "may use 42" in second.json()["error"]["message"] and int(second.headers["Retry-After"]) >= 1
        events = [line for line in lines if line.startswith("data: {")]
    # The client did not ask for usage, and sees none, though the gateway settled with it: what
    # the same request costs (ignore_eos: all 40 tokens), asked of a key without limits.
    assert events and not any('"usage"' in e for e in events)
    used = client(gw, gw.key).completions.create(model="airlock-tiny", prompt="Once", max_tokens=40,
                                                  extra_body={"ignore_eos": True}).usage.total_tokens
    assert 0 <= tpm_level(gw, key) - (60 - used) <= 6  # plus a few seconds of refill


def test_more_than_a_whole_minute_of_budget_is_400_not_an_endless_429(capped):
    """Had it been a 429, a client would retry forever a request that can never fit."""
    app = client(capped, capped.new_key("inference", tpm=30))
    with pytest.raises(openai.BadRequestError, match="whole limit of 30 tokens per minute"):
        app.completions.create(model="airlock-tiny", prompt="Once", n=2, max_tokens=20)


def test_a_failed_request_gives_its_reservation_back_and_an_answer_pays_its_real_usage(capped, vllm_server):
    """Had a failure kept its reservation, refused requests would lock the key out; had the
    reservation stood in for the usage, every answer shorter than max_tokens would overcharge."""
    gw = capped
    eos = json.loads((vllm_server.model_dir / "config.json").read_text())["eos_token_id"]
    key = gw.new_key("inference", tpm=60)
    app = client(gw, key)
    for _ in range(3):  # the engine refuses each (a negative temperature) after the reservation
        with pytest.raises(openai.BadRequestError):
            app.completions.create(model="airlock-tiny", prompt="Once", max_tokens=50, temperature=-1)
    assert tpm_level(gw, key) >= 59
    # 52 reserved (the prompt's estimate and max_tokens); the end-of-sequence token forced first,
    # so the answer ends at once and pays only its few real tokens.
    answer = app.completions.create(model="airlock-tiny", prompt="Once", max_tokens=50, logit_bias={str(eos): 100})
    assert answer.choices[0].finish_reason == "stop" and answer.usage.completion_tokens == 1
    assert 0 <= tpm_level(gw, key) - (60 - answer.usage.total_tokens) <= 2
