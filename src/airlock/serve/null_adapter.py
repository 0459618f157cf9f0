"""The base model served as an adapter that changes nothing, so a CPU engine never mixes adapters.

vLLM's CPU LoRA kernels (vllm/lora/ops/torch_ops/lora_ops.py, vLLM 0.32) gather each token's LoRA
weights with `weights[index]`, and a base-model token's index is -1 ("no LoRA"). The GPU kernels
skip -1; PyTorch reads it as the LAST adapter slot. So whenever base-model requests share a batch
with adapter requests and the engine's last slot (`--max-loras` - 1) holds an adapter, the base
model answers with that adapter's weights. Measured on the reference model, 4 adapters loaded,
`--max-loras 4`, 16 concurrent clients: 31 of 32 base answers were wrong, 30 of them exactly the
answers of the adapter in the last slot; with 3 adapters (the last slot empty) 0 of 32. A slot
keeps an unloaded adapter's weights, and vLLM's slot count can never exceed its adapter cache, so
no engine setting keeps that slot empty. (Upstream: vllm-project/vllm pull requests 48421 and
49656, open at 0.32.)

What airlock does instead: on a CPU engine the base weights are served under an internal name and
the public base-model name is a static LoRA of rank 1 whose matrices are zeros. Every request then
names an adapter, no token carries -1, and the zero adapter's delta is exactly 0.0, so the base
model's answers are bit for bit what they were.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from airlock.errors import InvalidInput
from airlock.private import make_private_dir, open_private

# A plain (unpacked) linear layer is the simplest target: vLLM gives every module an adapter does
# not name a zeroed slot, so one zero layer is a whole zero adapter.
TARGETS = ("o_proj", "down_proj", "dense", "out_proj")
WEIGHTS_FILE = "adapter_model.safetensors"


def engine_weights_name(served_name: str) -> str:
    """The name the engine serves the base weights under on a CPU engine (airlock's own callers
    never ask for it: they ask for `served_name`, which is then the zero adapter)."""
    return f"{served_name}.weights"


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, for a single or a sharded checkpoint."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        return {name: model_dir / file for name, file in weight_map.items()}
    from safetensors import safe_open

    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise InvalidInput(f"base model folder {model_dir} has neither model.safetensors nor "
                           "model.safetensors.index.json: the engine's zero adapter needs its layer shapes")
    with safe_open(single, framework="numpy") as f:
        return dict.fromkeys(f.keys(), single)


def _target_layer(model_dir: Path) -> tuple[str, list[int]]:
    """(module name, [out, in]) of the first layer's first plain linear layer."""
    from safetensors import safe_open

    files = _weight_files(model_dir)
    for target in TARGETS:
        for name in sorted(files):
            module = name.removesuffix(".weight")
            if name.endswith(".weight") and module.endswith(f".{target}") and ".layers.0." in name:
                with safe_open(files[name], framework="numpy") as f:
                    shape = f.get_slice(name).get_shape()
                if len(shape) == 2:
                    return module, shape
    raise InvalidInput(f"base model folder {model_dir}: no layer named {' or '.join(TARGETS)} in its first "
                       "block, so the CPU engine's zero adapter cannot be built (without it, adapters in "
                       "the same batch would answer for the base model)")


def write_null_adapter(model_dir: Path, dest: Path) -> Path:
    """Write a PEFT LoRA folder for `model_dir` whose delta is zero (rank 1, all zeros) to `dest`,
    owner-only like everything in the engine directory (the home's check refuses anything wider)."""
    import numpy as np
    from safetensors.numpy import save

    module, (out_features, in_features) = _target_layer(model_dir)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 1, "lora_alpha": 1, "lora_dropout": 0.0,
              "bias": "none", "target_modules": [module], "base_model_name_or_path": model_dir.name}
    prefix = f"base_model.model.{module}"
    weights = save({f"{prefix}.lora_A.weight": np.zeros((1, in_features), dtype=np.float32),
                    f"{prefix}.lora_B.weight": np.zeros((out_features, 1), dtype=np.float32)},
                   metadata={"format": "pt"})
    make_private_dir(dest)
    files = {"adapter_config.json": (json.dumps(config, indent=2) + "\n").encode(), WEIGHTS_FILE: weights}
    for name, data in files.items():
        with open(open_private(dest / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
            f.write(data)
    return dest
