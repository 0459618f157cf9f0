"""Gateways for the gateway's tests: offline, with a small upload limit, or in front of the
session's real vLLM (tests/gateway_support.py runs them)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from gateway_support import Gateway, gateway_settings, run_gateway


@pytest.fixture
def offline_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway whose vLLM port is closed: everything that needs no model, and the 503 path."""
    yield from run_gateway(gateway_settings(tmp_path / "home"))


@pytest.fixture
def small_upload_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """An offline gateway that takes uploads of at most 1 KiB: the 413 path, quickly."""
    yield from run_gateway(gateway_settings(tmp_path / "home", max_upload_bytes=1024))


def train_tiny_adapter(base_dir: Path, out_dir: Path, *, seed: int, text: str, steps: int = 30) -> Path:
    """A real PEFT LoRA adapter: a few steps on one sentence, enough to change greedy output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        ids = tokenizer(text, return_tensors="pt").input_ids
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(steps):
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.save_pretrained(out_dir)
    finally:
        torch.set_num_threads(threads)
    return out_dir


@pytest.fixture(scope="session")
def loaded_adapters(vllm_server, tmp_path_factory) -> Iterator[list[str]]:
    """Two adapters loaded into the session's vLLM under names no other test uses."""
    root = tmp_path_factory.mktemp("gateway-adapters")
    names = []
    for seed, (name, text) in enumerate([("gw-adapter-a", "Zebra zebra zebra zebra zebra."),
                                         ("gw-adapter-b", "Pepper pepper pepper pepper.")]):
        path = train_tiny_adapter(vllm_server.model_dir, root / name, seed=seed, text=text)
        vllm_server.load_adapter(name, path)
        names.append(name)
    yield names
    for name in names:
        vllm_server.unload_adapter(name)


@pytest.fixture
def live_gateway(tmp_path: Path, vllm_server) -> Iterator[Gateway]:
    """A gateway in front of the session's real vLLM server."""
    yield from run_gateway(gateway_settings(tmp_path / "home", engine_home=vllm_server.settings.engine_dir,
                                            serve_base_model=vllm_server.served_name))


@pytest.fixture
def start_gateway():
    """A function that runs a gateway on `settings` as a context manager: start, stop, start
    again on the same home (a restart)."""
    return contextmanager(run_gateway)
