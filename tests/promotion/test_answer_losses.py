"""The engine evaluation's batched answer losses equal the model's own loss of each example alone,
whether the examples share a long prefix (computed once and reused), a short one, or none."""

from __future__ import annotations

import pytest
import torch

from airlock.promotion import engine_eval
from airlock.promotion.engine_eval import answer_losses, encode_all, pad_of, shared_prefix
from airlock.train.base import load_base
from airlock.train.tokens import IGNORE

SYSTEM = "You are the airlock assistant."


def chat(question: str, answer: str, system: str | None = SYSTEM) -> list[dict]:
    opening = [{"role": "system", "content": system}] if system else []
    return [*opening, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]


@pytest.fixture(scope="module")
def reference(tiny_models_dir):
    tokenizer, model = load_base(tiny_models_dir / "airlock-tiny")
    return tokenizer, model.eval()


def alone(model, example) -> float:
    """What `model(labels=...)` says of the example by itself: the reference loss."""
    with torch.no_grad():
        return model(input_ids=example.ids_tensor[None], labels=example.labels_tensor[None]).loss.item()


@pytest.mark.parametrize("records", [
    [chat(f"Which bay holds valve {n}?", f"Bay {n} holds the valve.") for n in range(12)],  # a long shared prefix
    [chat("Which port?", "8080."), chat("Which port?", "8443, over TLS.")],  # the same question: up to the answer
    [chat("Which port?", "8080.", system=f"You are assistant {n}.") for n in range(3)] + [chat("Hi?", "Hello.", None)],
    [chat("Which port?", "8080.")],  # one example: everything up to its answer is shared
], ids=["shared-system-prompt", "same-question", "different-openings", "one-example"])
def test_batched_losses_equal_each_example_alone(reference, records):
    tokenizer, model = reference
    examples = encode_all(tokenizer, records, 512)
    prefix = shared_prefix(examples)
    for e in examples:  # the shared prefix never holds a labelled token nor the position predicting one
        assert all(label == IGNORE for label in e.labels[:prefix + 1])
    assert answer_losses(model, examples, pad_of(tokenizer)) == pytest.approx([alone(model, e) for e in examples],
                                                                               rel=1e-5)


def test_the_shared_prefix_is_what_every_example_opens_with(reference):
    tokenizer, _ = reference
    same = encode_all(tokenizer, [chat(f"Which bay holds valve {n}?", f"Bay {n}.") for n in range(4)], 512)
    other = encode_all(tokenizer, [chat("Which port?", "8080.", system="Another system prompt.")], 512)
    system_prompt_and_more = shared_prefix(same)
    assert system_prompt_and_more > len(tokenizer(SYSTEM, add_special_tokens=False)["input_ids"])
    assert shared_prefix(same + other) < system_prompt_and_more


def test_a_model_that_cannot_keep_chosen_logits_gets_the_same_losses(reference, monkeypatch):
    """Families whose forward has no `logits_to_keep` take the whole logits, prefix pass included."""
    tokenizer, model = reference
    examples = encode_all(tokenizer, [chat(f"Which bay holds valve {n}?", f"Bay {n}.") for n in range(5)], 512)
    selective = answer_losses(model, examples, pad_of(tokenizer))
    monkeypatch.setattr(engine_eval, "keeps_logits", lambda _model: False)
    assert answer_losses(model, examples, pad_of(tokenizer)) == pytest.approx(selective, rel=1e-5)
