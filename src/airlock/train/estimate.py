"""How much memory a fine-tuning run will need, estimated before it starts.

The worker claims this much for the run and, on a GPU it shares with the engine, refuses a run
that would not fit beside it. The figure is an upper-side estimate from the base model's own
files (no weights are loaded): the frozen weights as trained, the LoRA parameters with their
gradients and AdamW's two moments, and the activations that backward keeps for one micro-batch.
A run's `resources.memory_gb` overrides it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

MIB = 1024 * 1024
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
# Bytes kept per token, per layer and per hidden unit for backward: attention and MLP inputs,
# the MLP's wider intermediate, norms. 34 is the usual figure for a transformer layer in fp16
# with no recomputation; doubled for float32 training.
ACTIVATION_FACTOR = 34
RUNTIME_OVERHEAD_MIB = 512  # torch, the tokenizer and the process itself


def _parameters(base_dir: Path, config: dict) -> int:
    stored = sum(p.stat().st_size for p in base_dir.glob("*.safetensors"))
    return stored // BYTES.get(str(config.get("dtype") or config.get("torch_dtype") or "float32"), 4)


def training_memory_mb(base_dir: Path, params, *, gpu: bool) -> int:
    """Estimated peak memory of training `base_dir` with these `finetune.lora` parameters."""
    path = base_dir / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    hidden = int(config.get("hidden_size", 4096))
    layers = int(config.get("num_hidden_layers", 32))
    vocab = int(config.get("vocab_size", 32000))
    weight_bytes = 2 if gpu else 4  # bf16 where a GPU has it, float32 on the CPU
    if getattr(params, "method", "lora") == "qlora":
        weight_bytes = 0.55  # 4-bit NF4 with its scales
    frozen = _parameters(base_dir, config) * weight_bytes
    # LoRA on every linear layer of a layer: about 7 matrices of hidden x hidden scale.
    lora = 2 * params.rank * hidden * 7 * layers * 16  # weights, gradients, two AdamW moments (fp32)
    tokens = params.batch_size * params.max_length
    per_token = hidden * layers * ACTIVATION_FACTOR * (weight_bytes / 2)
    if getattr(params, "gradient_checkpointing", False):
        per_token = hidden * layers * 2 * weight_bytes + hidden * ACTIVATION_FACTOR * weight_bytes
    logits = tokens * vocab * 4 * 2  # float32 logits and their gradient
    return math.ceil((frozen + lora + tokens * per_token + logits) / MIB) + RUNTIME_OVERHEAD_MIB
