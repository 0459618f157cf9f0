"""The LoRA recipe on the real reference model: exact files, determinism, masking."""

from __future__ import annotations

import json

import pytest

from airlock.store.base import sha256_file
from airlock.train.config import LoraTrainConfig
from airlock.train.recipe import finetune, load_base
from airlock.train.tokens import IGNORE, encode_chat

from pydantic import ValidationError

RECORDS = [
    [{"role": "user", "content": "What colour is the door?"}, {"role": "assistant", "content": "The door is blue."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How many wheels?"},
     {"role": "assistant", "content": "Four wheels."}],
]
CONFIG = LoraTrainConfig(epochs=2, rank=4, batch_size=2, seed=3)


def test_adapter_files_and_determinism(tiny_models_dir, tmp_path):
    base = tiny_models_dir / "airlock-tiny"
    first = finetune(base, RECORDS, CONFIG, tmp_path / "a")
    second = finetune(base, RECORDS, CONFIG, tmp_path / "b")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    for name in files:
        assert sha256_file(tmp_path / "a" / name) == sha256_file(tmp_path / "b" / name), name
    assert first.losses == second.losses and first.steps == 2 == len(first.losses)
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["target_modules"] == sorted(config["target_modules"])
    assert config["base_model_name_or_path"] == "airlock-tiny"  # no host path in a signed artifact
    other = finetune(base, RECORDS, CONFIG.model_copy(update={"seed": 4}), tmp_path / "c")
    assert other.losses != first.losses


def test_only_assistant_tokens_carry_labels(tiny_models_dir):
    tokenizer, _ = load_base(tiny_models_dir / "airlock-tiny")
    example = encode_chat(tokenizer, RECORDS[1], 512)
    labelled = [t for t in example.labels if t != IGNORE]
    assert tokenizer.decode(labelled) == "Four wheels." + tokenizer.eos_token
    assert len(example.labels) == len(example.input_ids)


def test_too_long_record_is_named(tiny_models_dir):
    from airlock.errors import InvalidInput

    tokenizer, _ = load_base(tiny_models_dir / "airlock-tiny")
    with pytest.raises(InvalidInput, match="record 7: .* longer than max_length 8"):
        encode_chat(tokenizer, RECORDS[0], 8, where="record 7")


def test_config_refuses_typos_and_bad_values():
    with pytest.raises(ValidationError) as info:
        LoraTrainConfig(rank=0, learnin_rate=1.0)
    text = str(info.value)
    assert "rank" in text and "learnin_rate" in text


def test_diverging_loss_stops_with_a_clear_message(tiny_models_dir, tmp_path):
    from airlock.errors import StageFailed

    # Past the config's own limits on purpose (model_copy skips validation), to make it diverge.
    wild = CONFIG.model_copy(update={"learning_rate": 1e30, "max_grad_norm": 0.0, "epochs": 4, "batch_size": 1})
    with pytest.raises(StageFailed, match=r"training diverged: the loss is (nan|inf) at step \d+ of 8"):
        finetune(tiny_models_dir / "airlock-tiny", RECORDS, wild, tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing half-trained is saved
