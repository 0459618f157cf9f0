"""vLLM's CPU LoRA kernels, computed once per adapter instead of once per token.

vLLM's CPU build (vllm/lora/ops/torch_ops/lora_ops.py, 0.32) computes a batch's LoRA products by
gathering each token's adapter matrices (`weights[indices]`, one copy per token) and multiplying
token by token. On the shipped model that costs about as much as the base model's own matmuls:
512 tokens through one 576x1536 projection took 7.6 ms for the LoRA half against 9.2 ms for the
base weights. Here each adapter's tokens are multiplied at once by its matrices, with no copy:
0.9 ms for the same product. A token whose index is -1 ("no adapter") gets no delta, as on the
GPU kernels, where the gather would read the last adapter slot (serve/null_adapter.py tells that
defect; the base model stays a zero adapter on the CPU regardless, so answers never depend on
this module being loaded).

vLLM loads it in each of its processes through the `vllm.general_plugins` entry point that
airlock's package declares; the engine's log says so when it does. The results equal the
originals' (tests/serve/test_cpu_lora_kernels.py compares them on every path).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("airlock.cpu_lora_kernels")

# The functions replaced, in the module that defines them and where the CPU wrapper imported them.
KERNELS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
PATCHED_MODULES = ("vllm.lora.ops.torch_ops.lora_ops", "vllm.lora.punica_wrapper.punica_cpu")
LOADED_MESSAGE = "airlock: vLLM's CPU LoRA kernels compute once per adapter"


def _per_adapter(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor:
    """Each token's `inputs @ weights[index].T`, one matmul per adapter in the batch; rows whose
    index is -1 stay zero. `weights` is vLLM's stacked slots: [slots, (1,) out, in]."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    out = torch.zeros(inputs.shape[0], weights.shape[1], dtype=dtype, device=inputs.device)
    x = inputs.to(dtype=dtype)
    for slot in torch.unique(indices).tolist():
        if slot < 0:
            continue
        rows = (indices == slot).nonzero().squeeze(1)
        out[rows] = x[rows] @ weights[slot].to(dtype=dtype).T
    return out


def bgmv_shrink(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, scaling: float = 1.0) -> None:
    outputs = _per_adapter(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, add_inputs: bool = True) -> None:
    outputs = _per_adapter(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    # As upstream: one row of outputs is written to the first row only, and an adapter and the
    # model may pad their widths differently.
    limit = 1 if outputs.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    width = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :width] += outputs[:limit, :width]
    else:
        output_tensor[:, :width] = outputs[:limit, :width]


def bgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                      lora_indices_tensor: torch.Tensor, slice_offset: int, slice_size: int,
                      add_inputs: bool = True) -> None:
    outputs = _per_adapter(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = outputs


def install() -> None:
    """vLLM's general-plugin hook: put these kernels in place of the CPU build's own. vLLM may call
    it more than once per process; it is idempotent. Without vLLM's LoRA package it does nothing."""
    import importlib

    replacements = {name: globals()[name] for name in KERNELS}
    for module_name in PATCHED_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a vLLM without these modules keeps its own kernels
            return
        for name, kernel in replacements.items():
            setattr(module, name, kernel)
    log.warning("%s (airlock.serve.cpu_lora_kernels)", LOADED_MESSAGE)
