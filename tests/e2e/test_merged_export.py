"""Exports on the shared real appliance: an adapter trained here through the quickstart (with a
seed of this module's own), exported as PEFT files and merged into its base; the merged model,
loaded by plain transformers (no PEFT), answers greedily exactly as the served alias does through
the real vLLM engine. Tests run in file order and share one trained adapter."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from openai import OpenAI

from e2e_support import QA, QUICKSTART

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
ALIAS = "export-assistant"
SEED = 83  # this module's own: the same data, settings and seed would make another module's adapter
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def trained(appliance) -> dict:
    appliance.cli("gate", "policy", "set", ALIAS, "--approvals", "0")
    appliance.cli("workflow", "run", str(QUICKSTART), "--set", f"alias={ALIAS}", "--set", f"finetune.seed={SEED}",
                  "--wait")
    models = json.loads(appliance.cli("models", "list", "--json").stdout)
    model = next(m for m in models if m.get("aliases") == ALIAS)
    return {"model_id": model["id"], "client": OpenAI(base_url=appliance.gateway_url + "/v1",
                                                      api_key=appliance.new_key("export-test"), max_retries=0)}


@pytest.fixture(scope="module")
def exports(appliance, trained, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("exports")
    for form, extra in (("adapter", []), ("merged", ["--merged"])):
        appliance.cli("models", "export", trained["model_id"], "--out", str(folder / form), *extra)
    return {"adapter": folder / "adapter", "merged": folder / "merged"}


def test_both_exports_verify_and_are_audited_with_their_destination(appliance, trained, exports):
    assert sorted(p.name for p in exports["adapter"].iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "airlock-export.json"]
    for form, folder in exports.items():
        out = appliance.cli("models", "verify-export", str(folder)).stdout
        assert f"{form} export of {trained['model_id']}" in out
    lines = appliance.cli("audit", "list", "--action", "model.exported", "--jsonl").stdout.splitlines()
    for folder in exports.values():
        assert any(trained["model_id"] in line and str(folder) in line for line in lines), lines

def test_the_merged_export_answers_as_the_served_alias(trained, exports):
    """Plain transformers on the merged folder, greedy, against the alias through vLLM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exports["merged"])
    model = AutoModelForCausalLM.from_pretrained(exports["merged"], dtype=torch.float32)
    served, local = [], []
    for messages in QA:
        reply = trained["client"].chat.completions.create(model=ALIAS, messages=messages[:-1], temperature=0,
                                                          max_tokens=MAX_TOKENS)
        served.append(reply.choices[0].message.content.strip())
        ids = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False)
        local.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    assert local == served
    # The control: these are the trained answers, which the base model does not give.
    assert sum(a == m[-1]["content"] for a, m in zip(served, QA)) >= len(QA) - 1


def test_no_key_can_export_over_http(appliance, trained, tmp_path):
    """An admin key included: an export is a host action (the CLI as the appliance's account)."""
    out = appliance.cli("apikey", "create", "--name", "export-admin", "--role", "admin").stdout
    admin = re.search(r"ak-[A-Za-z0-9_-]+", out).group(0)
    headers = {"Authorization": f"Bearer {admin}"}
    for path in (f"/api/models/{trained['model_id']}/export", "/api/models/export", "/api/exports"):
        answer = httpx.post(appliance.gateway_url + path, headers=headers, json={"out": str(tmp_path / "x")},
                            timeout=60)
        assert answer.status_code in (404, 405), (path, answer.status_code, answer.text[:200])
    assert not (tmp_path / "x").exists()
