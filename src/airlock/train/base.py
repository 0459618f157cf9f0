"""Loading the base model to train on, and what its hardware and attention allow."""

from __future__ import annotations

from pathlib import Path

from airlock.errors import InvalidInput


def device():
    """The GPU where one is present (GPU hosts), else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def training_dtype(precision: str):
    """float32 on the CPU; bf16 on a GPU that has it (auto), or as asked."""
    import torch

    if precision == "auto":
        gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if gpu_bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[precision]


def load_base(base_dir: Path, precision: str = "float32", quantize_4bit: bool = False):
    """Tokenizer and model of a base folder (safetensors only), on `device()`; with
    `quantize_4bit` (QLoRA) its linear layers in 4-bit NF4, which needs a GPU and bitsandbytes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the stage reports its own progress
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    dtype = training_dtype(precision)
    if not quantize_4bit:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, use_safetensors=True)
        return tokenizer, model.to(device())
    if not torch.cuda.is_available():
        raise InvalidInput("method qlora needs a GPU (its 4-bit base runs on CUDA only); use lora on this host")
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401 - its absence is reported here, not deep in transformers
    except ImportError:
        raise InvalidInput("method qlora needs the bitsandbytes package, which this installation lacks") from None
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16 if dtype == torch.float32 else dtype)
    model = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=quantization, use_safetensors=True,
                                                 device_map={"": 0})
    return tokenizer, model


def packs_apart(model) -> bool:
    """Whether the model keeps examples packed into one row apart: the logits of two short
    sequences packed (position ids restarting) equal their logits alone. No generator is drawn
    from, so the probe leaves training exactly as it would be without it."""
    import torch

    vocab = model.config.vocab_size if hasattr(model, "config") else 1000
    first = (torch.arange(6) * 7 + 3) % vocab
    second = (torch.arange(5) * 11 + 5) % vocab
    packed = torch.cat([first, second])[None].to(device())
    positions = torch.cat([torch.arange(6), torch.arange(5)])[None].to(device())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            together = model(input_ids=packed, position_ids=positions, use_cache=False).logits[0].float()
            alone = model(input_ids=second[None].to(device()), use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    tolerance = 1e-3 if together.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32 else 5e-2
    return bool(torch.allclose(together[6:], alone, atol=tolerance, rtol=0))


def attention_of(model) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) or "unknown"
