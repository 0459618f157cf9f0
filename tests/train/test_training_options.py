"""Packing, validation with early stopping, gradient accumulation and the LoRA variants, on the
tiny reference model (and a tiny Bloom, whose ALiBi attention cannot keep packed rows apart)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from airlock.errors import InvalidInput
from airlock.train.base import load_base
from airlock.train.config import LoraTrainConfig
from airlock.train.recipe import choose_packing, encode_dataset, finetune
from airlock.train.tokens import IGNORE, pack
from airlock.train.validation import eval_loss, hold_out

from workflow_records import RECORDS


@pytest.fixture
def base(tiny_models_dir) -> Path:
    return tiny_models_dir / "airlock-tiny"


def per_token_losses(logits, labels):
    import torch

    return torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE, reduction="none")


def test_each_example_packed_has_the_loss_it_has_alone(base):
    import torch

    tokenizer, model = load_base(base)
    examples = encode_dataset(tokenizer, RECORDS, 512)
    ids, labels, positions = pack(examples, 512, tokenizer.pad_token_id)
    assert ids.shape[0] == 1 and int((ids != tokenizer.pad_token_id).sum()) == sum(len(e.input_ids) for e in examples)
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
        at = 0
        # pack() places the longest first; walk the row in its order.
        for e in sorted(examples, key=lambda e: len(e.input_ids), reverse=True):
            alone = model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0]
            n = len(e.input_ids)
            want = per_token_losses(alone, torch.tensor(e.labels))
            got = per_token_losses(packed[at:at + n], labels[0, at:at + n])
            mask = torch.tensor(e.labels[1:]) != IGNORE
            assert torch.allclose(got[mask], want[mask], atol=1e-5), (got[mask] - want[mask]).abs().max()
            at += n


def test_packed_training_follows_padded_training(base, tmp_path):
    config = LoraTrainConfig(epochs=3, rank=4, batch_size=4, seed=2)
    packed = finetune(base, RECORDS, config.model_copy(update={"packing": "on"}), tmp_path / "p")
    padded = finetune(base, RECORDS, config.model_copy(update={"packing": "off"}), tmp_path / "q")
    assert packed.packing and not padded.packing and padded.packing_note == "packing off (packing: off)"
    assert packed.losses == pytest.approx(padded.losses, rel=1e-4)


def tiny_bloom(tmp_path: Path, base: Path) -> Path:
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(0)
    folder = tmp_path / "tiny-bloom"
    BloomForCausalLM(BloomConfig(vocab_size=2048, hidden_size=32, n_layer=2, n_head=2)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / name, folder / name)
    return folder


def test_packing_is_off_with_a_reason_where_attention_cannot_keep_rows_apart(base, tmp_path):
    _, model = load_base(tiny_bloom(tmp_path, base))
    config = LoraTrainConfig(target_modules=["query_key_value"])
    used, note = choose_packing(config, model)
    assert not used and note.startswith("packing off: this model's attention (") and "see each other" in note
    with pytest.raises(InvalidInput, match="packing: on, but this model's attention .* set packing: off"):
        choose_packing(config.model_copy(update={"packing": "on"}), model)
    assert choose_packing(LoraTrainConfig(), load_base(base)[1])[0]


def test_validation_early_stopping_keeps_the_best_adapter(base, tmp_path):
    from peft import PeftModel

    config = LoraTrainConfig(epochs=30, rank=8, batch_size=2, learning_rate=0.02, validation_split=0.25,
                             eval_every=3, early_stopping_patience=3, seed=0)
    result = finetune(base, RECORDS, config, tmp_path / "best")
    steps = [int(s) for s, _ in result.eval_losses]
    assert steps == list(range(3, result.early_stopped_at + 1, 3)) and result.early_stopped_at < result.steps
    best = min(result.eval_losses, key=lambda e: e[1])
    assert (result.best_step, result.best_eval_loss) == (best[0], best[1]) and result.best_step < steps[-1]
    # Three evaluations after the best, none lower: patience 3.
    assert steps[-1] == result.best_step + 3 * 3
    tokenizer, model = load_base(base)
    _, held = hold_out(RECORDS, 0.25)
    saved = PeftModel.from_pretrained(model, tmp_path / "best")
    loss = eval_loss(saved, encode_dataset(tokenizer, held, 512), 2, tokenizer.pad_token_id)
    assert loss == pytest.approx(result.best_eval_loss, abs=1e-5)  # the best, not the last


def test_the_held_out_records_do_not_depend_on_seed_or_order():
    train, held = hold_out(RECORDS, 0.25)
    assert len(held) == 2 and len(train) == 6 and not [r for r in held if r in train]
    assert hold_out(list(reversed(RECORDS)), 0.25)[1] == sorted(held, key=lambda r: list(reversed(RECORDS)).index(r))


def test_gradient_accumulation_equals_the_larger_batch(base, tmp_path):
    big = LoraTrainConfig(epochs=2, rank=4, batch_size=4, seed=4, packing="off")
    small = big.model_copy(update={"batch_size": 2, "gradient_accumulation": 2})
    a = finetune(base, RECORDS, big, tmp_path / "a")
    b = finetune(base, RECORDS, small, tmp_path / "b")
    assert a.steps == b.steps == 4 and b.losses == pytest.approx(a.losses, rel=1e-5)


@pytest.mark.parametrize(("method", "key"), [("dora", "use_dora"), ("rslora", "use_rslora")])
def test_dora_and_rslora_train_and_say_so_in_the_adapter(base, tmp_path, method, key):
    result = finetune(base, RECORDS, LoraTrainConfig(method=method, epochs=4, rank=4, seed=1), tmp_path / method)
    config = json.loads((tmp_path / method / "adapter_config.json").read_text())
    # A step's loss depends on which examples it drew, so one step against another is noise (the
    # CPU's rounding alone can order them either way): the last epoch against the first is not.
    per_epoch = len(result.losses) // 4
    first, last = result.losses[:per_epoch], result.losses[-per_epoch:]
    assert config[key] is True and sum(last) / per_epoch < sum(first) / per_epoch - 0.2, result.losses


def test_validation_settings_are_checked():
    with pytest.raises(ValueError, match="need validation_split or validation_set"):
        LoraTrainConfig(early_stopping_patience=2)
    with pytest.raises(ValueError, match="not both"):
        LoraTrainConfig(validation_split=0.1, validation_set="held.jsonl")
