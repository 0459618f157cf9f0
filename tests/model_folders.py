"""Hugging Face model folders as a site would carry them in, made for real in the test: a tiny
model of a family built by transformers from its config and saved by `save_pretrained`
(safetensors, sharded on request), with the reference model's tokenizer and chat template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
SIZES = dict(vocab_size=2048, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
           "mistral": ("MistralConfig", "MistralForCausalLM")}


def hf_folder(dest: Path, tokenizer_from: Path, *, family: str = "llama", tied: bool = False,
              max_shard_size: str | None = None, seed: int = 0) -> Path:
    """A real model folder at `dest`: config.json, generation_config.json, safetensors, tokenizer."""
    import torch
    import transformers

    config_cls, model_cls = (getattr(transformers, n) for n in CLASSES[family])
    torch.manual_seed(seed)
    model = model_cls(config_cls(**SIZES, tie_word_embeddings=tied))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(dest, **kwargs)
    for name in TOKENIZER_FILES:
        shutil.copy(Path(tokenizer_from) / name, dest / name)
    return dest


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2))


def rewrite_weights(path: Path, change) -> None:
    """Load the tensors of one safetensors file, let `change(tensors)` edit the dict, save it back."""
    with safe_open(path, framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def drop_chat_template(folder: Path) -> str:
    """Remove the tokenizer's chat template and return it."""
    config = json.loads((folder / "tokenizer_config.json").read_text())
    template = config.pop("chat_template")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return template
