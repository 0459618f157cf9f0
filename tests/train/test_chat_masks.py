"""The assistant-token mask in the chat-template styles of Llama 3, Qwen2.5, Mistral and Gemma:
every assistant turn of a multi-turn conversation trained, up to and including its end-of-turn
token, and nothing of the prompts, the system message or the separators between turns."""

from __future__ import annotations

import pytest

from airlock.train.config import LoraTrainConfig
from airlock.train.recipe import finetune
from airlock.train.tokens import IGNORE, encode_chat
from chat_families import FAMILIES, build

CONVERSATION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Colour of the sky?"},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And grass?"},
    {"role": "assistant", "content": "Green."},
]


def trained_spans(example) -> list[list[int]]:
    spans, current = [], []
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_assistant_turn_and_only_those_is_trained(family, tiny_models_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    folder = build(family, tiny_models_dir / "airlock-tiny", tmp_path_factory.getbasetemp())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    example = encode_chat(tokenizer, CONVERSATION, 512)
    end = FAMILIES[family]["end_of_turn"]
    decoded = [tokenizer.decode(span).strip() for span in trained_spans(example)]
    assert decoded == [f"Blue.{end}", f"Green.{end}"], tokenizer.decode(example.input_ids)
    # The whole rendering holds the prompts, which carry no label.
    rendered = tokenizer.decode(example.input_ids)
    assert "Colour of the sky?" in rendered and "Answer in one word." in rendered


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_trains(family, tiny_models_dir, tmp_path_factory, tmp_path):
    folder = build(family, tiny_models_dir / "airlock-tiny", tmp_path_factory.getbasetemp())
    result = finetune(folder, [CONVERSATION] * 4, LoraTrainConfig(epochs=3, rank=4, batch_size=2, learning_rate=0.01),
                      tmp_path / "adapter")
    assert result.losses[-1] < result.losses[0] and (tmp_path / "adapter" / "adapter_model.safetensors").exists()
