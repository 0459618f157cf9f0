"""Canary rollouts through the real gateway and the session's vLLM engine, called with the official
openai client: the split between champion and candidate, a real breach rolled back at once, an
abort, and a window that ends in the candidate's promotion by the worker's loop.

The breach is real: the candidate's adapter is taken out of the engine (as an engine that lost it
would be), so its requests really fail, and the gateway's own judgement rolls it back.
"""

from __future__ import annotations

import time

import openai
import pytest
from gate_support import promoted, real_candidate
from gateway_support import gateway_settings, run_gateway

from airlock.context import Airlock
from airlock.serve.canary import abort_canary, canary_status, promote_passed, start_canary
from airlock.serve.deploy import switch
from airlock.states import CanaryState

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
ALIAS = "support-bot"
QUESTION = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def stack(vllm_server, tmp_path_factory):
    """A gateway on a home of its own in front of the session's engine, its alias served by a
    promoted champion, and a second promoted model to try."""
    home = tmp_path_factory.mktemp("canary")
    settings = gateway_settings(home / "home", engine_home=vllm_server.settings.engine_dir,
                                serve_base_model=vllm_server.served_name, models_dir=vllm_server.settings.models_dir)
    airlock = Airlock.open(settings)
    champion, champion_promotion = promoted(airlock, home, ALIAS, model_id=real_candidate(airlock, home, zero=False,
                                                                                           seed=1))
    candidate, _ = promoted(airlock, home, ALIAS, model_id=real_candidate(airlock, home, zero=False, seed=2))
    switch(airlock, ALIAS, champion, champion_promotion, actor="test")
    gateway = run_gateway(settings)
    gw = next(gateway)
    yield airlock, gw, vllm_server, champion, candidate
    gateway.close()
    for model_id in (champion, candidate):
        if model_id in vllm_server.client.loaded_adapters():
            vllm_server.unload_adapter(model_id)


def ask(gw) -> str:
    """One chat completion of the alias: which side of a canary answered (its x-airlock-canary
    header); with no canary, the adapter that answered; or the error's status."""
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0)
    try:
        raw = client.chat.completions.with_raw_response.create(model=ALIAS, messages=QUESTION, max_tokens=4,
                                                               temperature=0)
    except openai.APIStatusError as exc:
        return f"HTTP {exc.status_code}"
    raw.parse()
    return raw.headers.get("x-airlock-canary") or f"adapter {raw.headers['x-airlock-adapter']}"


def start(airlock, candidate, **limits):
    options = {"percent": 50.0, "window_s": 600.0, "max_error_rate": 0.2, "max_latency_ratio": 50.0,
               "min_requests": 5} | limits
    return start_canary(airlock, ALIAS, candidate, actor="test", **options)


def test_a_real_breach_rolls_the_candidate_back_at_once(stack):
    airlock, gw, engine, champion, candidate = stack
    canary = start(airlock, candidate)
    sides = [ask(gw) for _ in range(20)]
    assert {"candidate", "champion"} <= set(sides), sides  # half and half, by chance
    assert canary_status(airlock, ALIAS).state == CanaryState.RUNNING

    engine.unload_adapter(candidate)  # the fault: the candidate can no longer answer
    outcomes, broke_at = [], time.monotonic()
    while len(outcomes) < 60 and canary_status(airlock, ALIAS).state == CanaryState.RUNNING:
        outcomes.append(ask(gw))
    rolled = canary_status(airlock, ALIAS)
    assert rolled.state == CanaryState.ROLLED_BACK, outcomes
    assert rolled.reason.startswith("the candidate failed "), rolled.reason
    assert time.monotonic() - broke_at < 30
    failed = [o for o in outcomes if o.startswith("HTTP")]
    assert failed and set(failed) == {"HTTP 503"}  # the candidate's own requests: not loaded
    assert len(failed) <= canary.min_requests + 1
    # Every request after the roll-back is the champion's, with no canary any more.
    assert [ask(gw) for _ in range(10)] == [f"adapter {champion}"] * 10
    arms = rolled.arms()
    assert arms["candidate"].errors >= canary.min_requests * canary.max_error_rate
    assert airlock.meta.query("SELECT subject FROM audit WHERE action = 'canary.rolled_back'") == [{"subject": ALIAS}]


def test_an_abort_gives_every_request_back_to_the_champion(stack):
    airlock, gw, _, champion, candidate = stack
    start(airlock, candidate)  # loaded again, verified, on every replica
    assert "candidate" in {ask(gw) for _ in range(20)}
    aborted = abort_canary(airlock, ALIAS, actor="test")
    assert aborted.state == CanaryState.ABORTED and aborted.reason == "aborted by test"
    assert {ask(gw) for _ in range(10)} == {f"adapter {champion}"}


def test_a_window_without_a_breach_ends_in_the_candidate_s_promotion(stack):
    airlock, gw, _, champion, candidate = stack
    start(airlock, candidate, window_s=10.0, min_requests=3)
    deadline = time.monotonic() + 60
    while canary_status(airlock, ALIAS).state == CanaryState.RUNNING:
        assert time.monotonic() < deadline, "the window did not end"
        ask(gw)
    passed = canary_status(airlock, ALIAS)
    assert passed.state == CanaryState.PASSED, passed.reason
    assert [c.id for c in promote_passed(airlock)] == [passed.id]  # the worker's loop
    assert canary_status(airlock, ALIAS).state == CanaryState.PROMOTED
    row = airlock.meta.one("SELECT model_id FROM aliases WHERE name = ?", (ALIAS,))
    assert row["model_id"] == candidate
    history = airlock.meta.one("SELECT event FROM alias_history WHERE alias = ? ORDER BY rowid DESC LIMIT 1", (ALIAS,))
    assert history["event"] == "canary promoted"
