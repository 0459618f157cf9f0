"""The gate's evaluation on the reference model: golden numbers, and the three models scored on the
same loaded weights (a freshly initialised adapter answers exactly as the base does)."""

from __future__ import annotations

import json

import pytest
from gate_support import EVAL_SET

from airlock.promotion.evaluate import BASE, CANDIDATE, CHAMPION, compare, judge

# The reference model's mean answer loss on the quickstart's eval set. The model is rebuilt from a
# seed on each machine (a brief CPU pretraining), so the tolerance allows for another CPU's float
# rounding, and no more: a change to label masking, the chat template or the loss moves it by far more.
GOLDEN_BASE_LOSS = 7.0294
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def zero_adapter(tmp_path_factory, tiny_models_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models_dir / "airlock-tiny", dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"]))
    folder = tmp_path_factory.mktemp("zero-adapter")
    model.save_pretrained(folder)
    return folder


def test_base_champion_and_candidate_scored_side_by_side_with_golden_numbers(tiny_models_dir, zero_adapter):
    records = [json.loads(line)["messages"] for line in EVAL_SET.read_text().splitlines()]
    scores = compare(tiny_models_dir / "airlock-tiny", zero_adapter, records, 512, champion_dir=zero_adapter)
    assert set(scores) == {BASE, CHAMPION, CANDIDATE}
    base = scores[BASE]
    assert base.loss == pytest.approx(GOLDEN_BASE_LOSS, abs=TOLERANCE)
    assert (base.exact_match, base.contains, base.examples) == (0.0, 0.0, 8)
    for other in (scores[CHAMPION], scores[CANDIDATE]):
        assert other.summary() == base.summary()  # B = 0: the same model, on the same weights
        assert [a["answer"] for a in other.answers] == [a["answer"] for a in base.answers]
    first = base.answers[0]
    assert set(first) == {"prompt", "reference", "answer", "loss", "match", "contains"}
    assert first["reference"] == records[0][-1]["content"]


def test_judging_folds_whitespace_and_contains_ignores_case():
    assert judge("  Port   8080 ", "Port 8080") == {"match": True, "contains": True}
    assert judge("It listens on PORT 8080 by default.", "port 8080") == {"match": False, "contains": True}
    assert judge("8081", "8080") == {"match": False, "contains": False}
