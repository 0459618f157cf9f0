"""airlock's CPU LoRA kernels give vLLM's results, without reading "no adapter" as the last slot.

The originals are loaded from vLLM's own file under another module name, so the comparison holds
even in a process where the plugin has already replaced them.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from airlock.serve import cpu_lora_kernels as ours


@pytest.fixture(scope="module")
def upstream():
    import vllm.lora.ops.torch_ops.lora_ops as installed

    spec = importlib.util.spec_from_file_location("upstream_lora_ops", Path(installed.__file__))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SLOTS, RANK, HIDDEN, OUT = 4, 8, 48, 80


def batch(tokens: int, seed: int, with_none: bool = False):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=gen)
    b = torch.randn(SLOTS, 1, OUT, RANK, generator=gen)
    low = -1 if with_none else 0
    indices = torch.randint(low, SLOTS, (tokens,), generator=gen)
    x = torch.randn(tokens, HIDDEN, generator=gen)
    h = torch.randn(tokens, RANK, generator=gen)
    return a, b, indices, x, h


@pytest.mark.parametrize("tokens", [1, 7, 64])
def test_shrink_equals_upstream(upstream, tokens):
    a, _, indices, x, _ = batch(tokens, seed=tokens)
    want, got = torch.zeros(tokens, RANK), torch.zeros(tokens, RANK)
    upstream.bgmv_shrink(x, a, want, indices, 0.5)
    ours.bgmv_shrink(x, a, got, indices, 0.5)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("add_inputs", [True, False])
@pytest.mark.parametrize("tokens", [1, 7, 64])
def test_expand_equals_upstream(upstream, tokens, add_inputs):
    _, b, indices, _, h = batch(tokens, seed=100 + tokens)
    start = torch.randn(tokens, OUT + 3)  # the model's output padded wider than the adapter's
    want, got = start.clone(), start.clone()
    upstream.bgmv_expand(h, b, want, indices, add_inputs)
    ours.bgmv_expand(h, b, got, indices, add_inputs)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("add_inputs", [True, False])
def test_expand_slice_equals_upstream(upstream, add_inputs):
    _, b, indices, _, h = batch(16, seed=7)
    start = torch.randn(16, 3 * OUT)
    want, got = start.clone(), start.clone()
    upstream.bgmv_expand_slice(h, b, want, indices, OUT, OUT, add_inputs)
    ours.bgmv_expand_slice(h, b, got, indices, OUT, OUT, add_inputs)
    torch.testing.assert_close(got, want)


def test_prefill_path_reaches_the_replacement(upstream, monkeypatch):
    """sgmv_* (the prefill entry) calls the bgmv_* of its own module, so the plugin's one
    replacement there covers it too."""
    import vllm.lora.ops.torch_ops.lora_ops as installed

    a, _, indices, x, _ = batch(6, seed=3, with_none=True)
    monkeypatch.setattr(installed, "bgmv_shrink", ours.bgmv_shrink)
    got = torch.zeros(6, RANK)
    installed.sgmv_shrink(x, a, got, None, torch.ones(6, dtype=torch.long), indices, 6, 1, 6, 1.0)
    assert torch.all(got[indices == -1] == 0)


def test_no_adapter_tokens_get_no_delta(upstream):
    """The defect this also removes: upstream gives a -1 token the last slot's product."""
    a, b, _, x, h = batch(6, seed=11)
    indices = torch.tensor([0, -1, 2, -1, 3, 1])
    shrunk = torch.zeros(6, RANK)
    ours.bgmv_shrink(x, a, shrunk, indices, 1.0)
    assert torch.all(shrunk[indices == -1] == 0)
    torch.testing.assert_close(shrunk[0], x[0] @ a[0, 0].T)
    start = torch.randn(6, OUT)
    expanded = start.clone()
    ours.bgmv_expand(h, b, expanded, indices, True)
    torch.testing.assert_close(expanded[indices == -1], start[indices == -1], rtol=0, atol=0)

    theirs = torch.zeros(6, RANK)
    upstream.bgmv_shrink(x, a, theirs, indices, 1.0)
    torch.testing.assert_close(theirs[1], x[1] @ a[SLOTS - 1, 0].T)  # the last slot's, not none


def test_install_replaces_both_modules_and_is_idempotent(monkeypatch):
    import vllm.lora.ops.torch_ops.lora_ops as ops
    import vllm.lora.punica_wrapper.punica_cpu as cpu

    for module in (ops, cpu):
        for name in ours.KERNELS:
            monkeypatch.setattr(module, name, getattr(module, name))  # undone after the test
    ours.install()
    ours.install()
    for module in (ops, cpu):
        for name in ours.KERNELS:
            assert getattr(module, name) is getattr(ours, name), (module.__name__, name)


def test_vllm_finds_the_plugin():
    found = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert found.get("airlock_cpu_lora_kernels") == "airlock.serve.cpu_lora_kernels:install"
