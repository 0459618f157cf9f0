"""The whole promise, end to end, on real parts: dataset -> LoRA -> eval -> sign -> gate -> vLLM
-> gateway -> the official openai client. Tests run in file order and share one appliance."""

from __future__ import annotations

import json
import threading

import pytest
from openai import OpenAI

from e2e_support import QA, QUICKSTART, candidate_workflow

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
ALIAS = "quickstart-assistant"


@pytest.fixture(scope="module")
def served(appliance):
    appliance.cli("workflow", "run", str(QUICKSTART), "--wait")
    runs = json.loads(appliance.cli("workflow", "list", "--json").stdout)
    return {"run_id": runs[0]["id"], "client": OpenAI(base_url=appliance.gateway_url + "/v1", api_key=appliance.new_key())}


def ask(client: OpenAI, model: str, messages: list[dict]) -> str:
    reply = client.chat.completions.create(model=model, messages=messages[:-1], temperature=0, max_tokens=48)
    return reply.choices[0].message.content.strip()


def test_alias_answers_with_trained_answers_and_base_does_not(served):
    client = served["client"]
    trained = [ask(client, ALIAS, m) == m[-1]["content"] for m in QA]
    base = [ask(client, "airlock-tiny", m) == m[-1]["content"] for m in QA]
    assert sum(trained) >= len(QA) - 1, trained
    assert not any(base), base


def test_streaming_through_alias_matches_non_streaming(served):
    client, messages = served["client"], QA[0]
    stream = client.chat.completions.create(model=ALIAS, messages=messages[:-1], temperature=0, max_tokens=48,
                                            stream=True)
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(chunks) > 2
    assert "".join(chunks).strip() == ask(client, ALIAS, messages)


def test_models_lists_alias_and_base(served):
    ids = {m.id for m in served["client"].models.list().data}
    assert {ALIAS, "airlock-tiny"} <= ids


def test_status_records_stages_and_artifacts(appliance, served):
    run = json.loads(appliance.cli("workflow", "status", served["run_id"], "--json").stdout)
    assert run["status"] == "succeeded"
    stages = {s["name"]: s for s in run["stages"]}
    assert list(stages) == ["finetune", "evaluate", "promote", "serve"]
    assert stages["finetune"]["outputs"]["adapter"].startswith("sha256:")
    assert stages["evaluate"]["outputs"]["eval"]["candidate"]["exact_match"] >= 0.9
    assert stages["serve"]["outputs"]["alias"] == ALIAS
    assert all(s["started_at"] and s["finished_at"] for s in stages.values())
    assert stages["finetune"]["inputs"]["dataset"].startswith("sha256:")


def test_rerun_with_same_inputs_skips_batch_stages(appliance, served):
    appliance.cli("workflow", "run", str(QUICKSTART), "--wait")
    latest = json.loads(appliance.cli("workflow", "list", "--json").stdout)[0]["id"]
    run = json.loads(appliance.cli("workflow", "status", latest, "--json").stdout)
    skipped = {s["name"]: s["skipped"] for s in run["stages"]}
    assert skipped == {"finetune": True, "evaluate": True, "promote": False, "serve": False}


def test_models_verify_passes_on_untouched_model(appliance, served):
    models = json.loads(appliance.cli("models", "list", "--json").stdout)
    adapter = next(m for m in models if m.get("aliases") == ALIAS)
    assert appliance.cli("models", "verify", adapter["id"]).returncode == 0


def second_candidate(appliance, tmp_path, seed: int) -> str:
    """Train and sign another adapter (different seed) without serving it; returns its id."""
    appliance.cli("workflow", "run", str(candidate_workflow(tmp_path)), "--set", f"finetune.seed={seed}", "--wait")
    latest = json.loads(appliance.cli("workflow", "list", "--json").stdout)[0]["id"]
    run = json.loads(appliance.cli("workflow", "status", latest, "--json").stdout)
    return run["stages"][0]["outputs"]["model_id"]


def test_alias_switch_does_not_break_requests_in_flight(appliance, served, tmp_path):
    client = served["client"]
    before = {m.id for m in client.models.list().data}
    candidate = second_candidate(appliance, tmp_path, seed=11)
    stream = client.chat.completions.create(
        model=ALIAS, messages=QA[1][:-1], max_tokens=200, stream=True, temperature=0,
        extra_body={"ignore_eos": True})
    first = next(iter(stream))
    # The quickstart's alias is unprotected: proposing the candidate switches it at once.
    switched = threading.Thread(target=appliance.cli, args=("gate", "propose", candidate, "--alias", ALIAS))
    switched.start()
    rest = [c for c in stream]
    switched.join()
    assert first.choices and len(rest) > 50
    assert rest[-1].choices[0].finish_reason == "length"
    aliases = json.loads(appliance.cli("models", "list", "--json").stdout)
    assert next(m for m in aliases if m["id"] == candidate)["aliases"] == ALIAS
    assert ask(client, ALIAS, QA[0]) == QA[0][-1]["content"]
    assert before <= {m.id for m in client.models.list().data}


def test_tampered_adapter_is_refused_and_alias_keeps_serving(appliance, served, tmp_path):
    client = served["client"]
    serving = next(m for m in json.loads(appliance.cli("models", "list", "--json").stdout) if m.get("aliases") == ALIAS)
    candidate = second_candidate(appliance, tmp_path, seed=23)
    model = next(m for m in json.loads(appliance.cli("models", "list", "--json").stdout) if m["id"] == candidate)
    tree = json.loads((appliance.home / "store" / "blobs" / "sha256" / model["tree_digest"][7:9]
                       / model["tree_digest"][7:]).read_text())
    weights = tree["files"]["adapter_model.safetensors"]["sha256"][7:]
    blob = appliance.home / "store" / "blobs" / "sha256" / weights[:2] / weights
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    verify = appliance.cli("models", "verify", candidate, check=False)
    assert verify.returncode == 5 and "adapter_model.safetensors" in verify.stderr
    propose = appliance.cli("gate", "propose", candidate, "--alias", ALIAS, check=False)
    assert propose.returncode == 5 and candidate in propose.stderr, propose.stderr
    deploy = appliance.cli("models", "deploy", candidate, "--alias", ALIAS, check=False)
    assert deploy.returncode != 0
    current = next(m for m in json.loads(appliance.cli("models", "list", "--json").stdout) if m.get("aliases") == ALIAS)
    assert current["id"] == serving["id"]
    assert ask(client, ALIAS, QA[0]) == QA[0][-1]["content"]
