"""Tiny models in the chat-template style of four model families: the reference model's
byte-level BPE with each family's special tokens added and a chat template written in that
family's style (the turn markers, the role names, where a system prompt goes, the end of a turn),
and random Llama weights sized to the vocabulary. Enough to train on and to check masks."""

from __future__ import annotations

import shutil
from pathlib import Path

LLAMA3 = ("{{- bos_token }}{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
          " + m['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}"
          "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
QWEN25 = ("{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant."
          "<|im_end|>\\n' }}{%- endif %}{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content']"
          " + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
# Mistral's instruct style: no system role of its own; the system prompt opens the first user turn.
MISTRAL = ("{{- bos_token }}{%- set system = messages[0]['content'] + '\\n\\n' if messages[0]['role'] == 'system' "
           "else '' %}{%- for m in messages if m['role'] != 'system' %}{%- if m['role'] == 'user' %}"
           "{{- '[INST] ' + (system if loop.first else '') + m['content'] + '[/INST]' }}{%- else %}"
           "{{- ' ' + m['content'] + eos_token }}{%- endif %}{%- endfor %}")
# Gemma's style: user and model turns; a system prompt opens the first user turn.
GEMMA = ("{{- bos_token }}{%- set system = messages[0]['content'] + '\\n\\n' if messages[0]['role'] == 'system' "
         "else '' %}{%- for m in messages if m['role'] != 'system' %}{%- set role = 'model' if m['role'] == "
         "'assistant' else 'user' %}{{- '<start_of_turn>' + role + '\\n' + (system if loop.first else '') + "
         "m['content'] | trim + '<end_of_turn>\\n' }}{%- endfor %}{%- if add_generation_prompt %}"
         "{{- '<start_of_turn>model\\n' }}{%- endif %}")

FAMILIES = {
    "llama3": {"template": LLAMA3, "bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "end_of_turn": "<|eot_id|>",
               "extra": ["<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"]},
    "qwen2.5": {"template": QWEN25, "bos": None, "eos": "<|im_end|>", "end_of_turn": "<|im_end|>",
                "extra": ["<|im_start|>", "<|endoftext|>"]},
    "mistral": {"template": MISTRAL, "bos": "<s>", "eos": "</s>", "end_of_turn": "</s>", "extra": ["[INST]", "[/INST]"]},
    "gemma": {"template": GEMMA, "bos": "<bos>", "eos": "<eos>", "end_of_turn": "<end_of_turn>",
              "extra": ["<start_of_turn>", "<end_of_turn>"]},
}


def build(family: str, reference: Path, out: Path) -> Path:
    """A model folder for `family` under `out`, made from the reference model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    spec = FAMILIES[family]
    folder = out / f"tiny-{family}"
    if (folder / "config.json").exists():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(reference)
    specials = {"additional_special_tokens": sorted(set(spec["extra"]) | {spec["end_of_turn"]}), "eos_token": spec["eos"]}
    if spec["bos"]:
        specials["bos_token"] = spec["bos"]
    tokenizer.add_special_tokens(specials)
    tokenizer.chat_template = spec["template"]
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    shutil.rmtree(folder / ".cache", ignore_errors=True)
    return folder
