"""The gateway in front of the real vLLM server, called with the official OpenAI client."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from airlock.meta.db import now

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

CHAT = [{"role": "user", "content": "What is an air gap?"}]


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0, timeout=120)


def set_alias(gw, alias: str, lora_name: str) -> None:
    with gw.meta.write() as db:
        db["aliases"].upsert({"name": alias, "model_id": lora_name, "lora_name": lora_name,
                              "base_model": gw.settings.serve_base_model, "updated_at": now()},
                             pk="name")


def test_probes_report_ready(live_gateway):
    assert httpx.get(f"{live_gateway.url}/healthz").status_code == 200
    ready = httpx.get(f"{live_gateway.url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_chat_completion(live_gateway):
    base = live_gateway.settings.serve_base_model
    resp = client(live_gateway).chat.completions.create(model=base, messages=CHAT, max_tokens=8,
                                                        temperature=0)
    assert resp.model == base
    assert isinstance(resp.choices[0].message.content, str)
    assert 0 < resp.usage.completion_tokens <= 8


def test_chat_completion_stream_arrives_in_chunks(live_gateway):
    base = live_gateway.settings.serve_base_model
    stream = client(live_gateway).chat.completions.create(
        model=base, messages=CHAT, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    texts = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for t in texts if t) > 1
    assert chunks[-1].usage is not None
    whole = client(live_gateway).chat.completions.create(model=base, messages=CHAT, max_tokens=16,
                                                         temperature=0)
    assert "".join(texts) == whole.choices[0].message.content


def test_completions_plain_and_streamed(live_gateway):
    base = live_gateway.settings.serve_base_model
    oa = client(live_gateway)
    plain = oa.completions.create(model=base, prompt="The gateway", max_tokens=8, temperature=0)
    streamed = oa.completions.create(model=base, prompt="The gateway", max_tokens=8, temperature=0,
                                     stream=True)
    assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text


def test_raw_stream_is_relayed_as_server_sent_events(live_gateway):
    body = {"model": live_gateway.settings.serve_base_model, "prompt": "Hello", "max_tokens": 8,
            "stream": True}
    events = []
    with httpx.stream("POST", f"{live_gateway.url}/v1/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {live_gateway.key}"}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert len(events) > 2 and events[-1] == "data: [DONE]"


def test_vllm_errors_pass_through(live_gateway):
    with pytest.raises(openai.BadRequestError) as info:
        client(live_gateway).chat.completions.create(
            model=live_gateway.settings.serve_base_model, messages=CHAT, max_tokens=100_000)
    assert info.value.status_code == 400
    assert info.value.message
    base = live_gateway.settings.serve_base_model
    with pytest.raises(openai.BadRequestError):  # a prompt longer than the engine's context
        client(live_gateway).completions.create(model=base, prompt="word " * 1000, max_tokens=1)
    m, replica = scrape(live_gateway), f"{base}-0"
    assert sample(m, "airlock_gateway_completion_errors_total", model=base, kind="engine_4xx") >= 1
    assert sample(m, "airlock_gateway_completion_seconds_count", model=base, engine=replica, stream="false") is None


def engine_text(vllm_server, lora_name: str, prompt: str, max_tokens: int) -> str:
    """What the engine itself completes with `lora_name` at temperature 0: which adapter answered."""
    resp = vllm_server.client.request("POST", "/v1/completions", json={
        "model": lora_name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
    return resp.json()["choices"][0]["text"]


def test_alias_resolves_to_its_adapter_and_switches_on_the_next_request(live_gateway, loaded_adapters,
                                                                       vllm_server):
    adapter_a, adapter_b = loaded_adapters
    assert set(loaded_adapters) <= set(vllm_server.loaded_adapters())
    oa = client(live_gateway)
    base = live_gateway.settings.serve_base_model
    set_alias(live_gateway, "support-bot", adapter_a)
    assert "support-bot" in [m.id for m in oa.models.list().data]

    via_alias = oa.chat.completions.create(model="support-bot", messages=CHAT, max_tokens=12,
                                           temperature=0)
    on_base = oa.chat.completions.create(model=base, messages=CHAT, max_tokens=12, temperature=0)
    # The answer names the alias asked for, never the adapter behind it.
    assert via_alias.model == "support-bot"
    assert via_alias.choices[0].message.content != on_base.choices[0].message.content

    set_alias(live_gateway, "support-bot", adapter_b)
    switched = oa.completions.create(model="support-bot", prompt="Hi", max_tokens=4, temperature=0)
    assert switched.model == "support-bot"
    assert switched.choices[0].text == engine_text(vllm_server, adapter_b, "Hi", 4)
    assert switched.choices[0].text != engine_text(vllm_server, adapter_a, "Hi", 4)
    # The adapter's own name is not a public model: only aliases and the base model are.
    with pytest.raises(openai.NotFoundError):
        oa.completions.create(model=adapter_b, prompt="Hi", max_tokens=4)


def test_request_in_flight_keeps_the_adapter_it_resolved(live_gateway, loaded_adapters, vllm_server):
    adapter_a, adapter_b = loaded_adapters
    set_alias(live_gateway, "canary", adapter_a)
    stream = client(live_gateway).completions.create(model="canary", prompt="Once", max_tokens=24,
                                                     temperature=0, stream=True)
    first = next(iter(stream))
    set_alias(live_gateway, "canary", adapter_b)
    rest = list(stream)
    assert {c.model for c in [first, *rest]} == {"canary"}
    assert "".join(c.choices[0].text for c in [first, *rest] if c.choices) == \
        engine_text(vllm_server, adapter_a, "Once", 24)
    after = client(live_gateway).completions.create(model="canary", prompt="Once", max_tokens=24, temperature=0)
    assert after.model == "canary"
    assert after.choices[0].text == engine_text(vllm_server, adapter_b, "Once", 24)


def scrape(gw) -> dict[tuple[str, frozenset], float]:
    """The gateway's /metrics as {(sample name, its labels): value}, read by prometheus_client."""
    text = httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {gw.key}"}).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_give_latency_histograms_tokens_and_the_engines_own_figures(live_gateway):
    base = live_gateway.settings.serve_base_model
    replica = f"{base}-0"  # the engine's only replica
    oa = client(live_gateway)
    plain = oa.completions.create(model=base, prompt="Hi", max_tokens=4, temperature=0,
                                  extra_body={"ignore_eos": True})
    # A stream whose client did not ask for usage: the engine's count reaches the metrics, the
    # client's chunks stay as it asked (no usage chunk).
    chunks = list(oa.chat.completions.create(model=base, messages=CHAT, max_tokens=5, temperature=0, stream=True,
                                             extra_body={"ignore_eos": True}))
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    with pytest.raises(openai.NotFoundError):
        oa.completions.create(model="no-such-model", prompt="Hi", max_tokens=1)
    m = scrape(live_gateway)
    assert sample(m, "airlock_gateway_requests_total", route="/v1/completions", status="200") == 1
    assert sample(m, "airlock_gateway_upstream_seconds_count", engine=replica) == 2
    for stream in ("false", "true"):
        assert sample(m, "airlock_gateway_completion_seconds_count", model=base, engine=replica, stream=stream) == 1
        # Histograms: every bucket a request fell in, so a p95 is readable (histogram_quantile).
        assert sample(m, "airlock_gateway_completion_seconds_bucket", model=base, engine=replica, stream=stream,
                      le="+Inf") == 1
    assert sample(m, "airlock_gateway_time_to_first_token_seconds_count", model=base, engine=replica) == 1
    first = sample(m, "airlock_gateway_time_to_first_token_seconds_sum", model=base, engine=replica)
    assert 0 < first < sample(m, "airlock_gateway_completion_seconds_sum", model=base, engine=replica, stream="true")
    assert sample(m, "airlock_gateway_tokens_total", model=base, engine=replica, kind="generated") == \
        plain.usage.completion_tokens + 5 == 9
    assert sample(m, "airlock_gateway_tokens_total", model=base, engine=replica, kind="prompt") > \
        plain.usage.prompt_tokens
    # A name nobody serves never becomes a label: the label set stays what the gateway serves.
    assert not any("no-such-model" in dict(labels).values() for _, labels in m)
    # The engine's own figures, with the engine's name.
    assert sample(m, "airlock_engine_up", engine=replica) == 1
    running = [v for (name, labels), v in m.items()
               if name == "vllm:num_requests_running" and dict(labels).get("engine") == replica]
    assert running == [0.0]
    assert any(name == "vllm:kv_cache_usage_perc" for name, _ in m)
    assert any(name == "vllm:generation_tokens_total" and dict(labels)["engine"] == replica for name, labels in m)
