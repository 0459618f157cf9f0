"""Two base models and two replicas in one appliance, from the README's settings: `airlock up`
with an engine list (AIRLOCK_ENGINES) of the reference model on two replicas and the shipped
instruct model on one, each its own vLLM. Called with the official openai client: both bases
listed and answering, an alias on an adapter of each, every adapter loaded into the engines of its
own base only (matched by digest), an adapter of no served base refused, and `airlock status`
listing every replica."""

from __future__ import annotations

import json

import openai
import pytest
from e2e_support import running_appliance
from gate_support import promoted, real_candidate, signed_candidate

from airlock.config import Settings
from airlock.context import Airlock
from airlock.errors import InvalidInput
from airlock.serve.deploy import switch
from airlock.serve.engine import engine_client
from airlock.serve.fleet import fleet, replica_settings

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
TINY, SHIPPED = "airlock-tiny", "smollm2-135m-instruct"
# Two cores here: the reference model's replicas one each, the instruct model beside the second.
ENGINES = [{"model": TINY, "replicas": 2, "cpus": ["0", "1"]}, {"name": "instruct", "model": SHIPPED, "cpus": ["1"]}]
QUESTION = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def two_bases(tmp_path_factory, tiny_models_dir):
    home = tmp_path_factory.mktemp("bases") / "home"  # short: three engines' sockets live under it
    with running_appliance(home, tiny_models_dir, AIRLOCK_ENGINES=json.dumps(ENGINES)) as running:
        settings = Settings(home=home, models_dir=tiny_models_dir, engines=json.dumps(ENGINES))
        yield running, Airlock.open(settings)


def chat(client: openai.OpenAI, model: str) -> tuple[str, dict]:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=QUESTION, max_tokens=4,
                                                           temperature=0)
    answer = raw.parse()
    assert answer.choices[0].message.content, answer
    return answer.model, dict(raw.headers)


def loaded(airlock: Airlock) -> dict[str, set[str]]:
    """Each replica's loaded adapters, asked of its own engine."""
    return {r.name: set(engine_client(replica_settings(airlock.settings, r)).loaded_adapters())
            for r in fleet(airlock.settings)}


def test_both_bases_and_an_alias_on_an_adapter_of_each_answer_the_official_client(two_bases, tmp_path):
    running, airlock = two_bases
    client = openai.OpenAI(base_url=f"{running.gateway_url}/v1", api_key=running.new_key("bases"), max_retries=0)
    assert {TINY, SHIPPED} <= {m.id for m in client.models.list()}
    for base in (TINY, SHIPPED):
        assert chat(client, base)[0] == base

    adapters = {}
    for alias, base in (("tiny-bot", TINY), ("instruct-bot", SHIPPED)):
        model_id, promotion = promoted(airlock, tmp_path, alias, model_id=real_candidate(
            airlock, tmp_path, zero=False, seed=3, base=base))
        switch(airlock, alias, model_id, promotion, actor="test")
        adapters[base] = model_id
        answered, headers = chat(client, alias)
        assert answered == alias and headers["x-airlock-adapter"] == model_id
    listed = {m.id for m in client.models.list()}
    assert {"tiny-bot", "instruct-bot"} <= listed

    # Each adapter is in every replica of its own base, and in no engine of the other.
    held = loaded(airlock)
    assert adapters[TINY] in held[f"{TINY}-0"] and adapters[TINY] in held[f"{TINY}-1"]
    assert adapters[SHIPPED] in held["instruct-0"]
    assert adapters[TINY] not in held["instruct-0"]
    assert adapters[SHIPPED] not in held[f"{TINY}-0"] | held[f"{TINY}-1"]

    # The operator's view: every replica, each with its model, health and adapters.
    status = json.loads(running.cli("status", "--json").stdout)
    replicas = {e["replica"]: e for e in status["engines"]}
    assert set(replicas) == {f"{TINY}-0", f"{TINY}-1", "instruct-0"}
    assert {e["health"] for e in replicas.values()} == {"ready"}
    assert replicas["instruct-0"]["model"] == SHIPPED and replicas["instruct-0"]["adapters"] >= 1


def test_an_adapter_of_no_served_base_is_refused_by_digest_whatever_its_name(two_bases, tmp_path):
    running, airlock = two_bases
    # It claims the reference model's name, but its digest is of some other model.
    stranger = signed_candidate(airlock, tmp_path, seed=9, base={"name": TINY, "digest": "sha256:" + "7" * 64})
    model_id, promotion = promoted(airlock, tmp_path, "stranger-bot", model_id=stranger)
    before = loaded(airlock)
    with pytest.raises(InvalidInput, match=f"model {stranger} adapts 'airlock-tiny'"):
        switch(airlock, "stranger-bot", model_id, promotion, actor="test")
    assert loaded(airlock) == before  # nothing was loaded anywhere
    client = openai.OpenAI(base_url=f"{running.gateway_url}/v1", api_key=running.new_key("stranger"), max_retries=0)
    with pytest.raises(openai.NotFoundError):
        chat(client, "stranger-bot")
