"""The base model with an adapter merged in: PEFT's `merge_and_unload`, saved as safetensors with
the base's own tokenizer and chat template, so plain transformers (no PEFT) or any engine loads it
as an ordinary model that answers as the adapter does.

Only safetensors are read (the base is checked by `check_model_dir`, the adapter came from the
store) and no remote code runs (`trust_remote_code` stays off).
"""

from __future__ import annotations

import shutil
from pathlib import Path

# The tokenizer and chat template travel as the base's own bytes: re-saving them through a
# tokenizer class could change what the model is prompted with.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")


def write_merged(base_dir: Path, adapter_dir: Path, out: Path) -> None:
    """Merge the adapter at `adapter_dir` into the model at `base_dir`; write the result into `out`."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_dir)
    # Merged in float32 (as airlock trains), then stored in the base's own dtype.
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    if isinstance(stored, str):
        stored = getattr(torch, stored)
    merged.to(stored).save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (Path(base_dir) / name).is_file():
            shutil.copyfile(Path(base_dir) / name, Path(out) / name)
