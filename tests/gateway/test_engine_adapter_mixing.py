"""Several adapters in one engine: under concurrent requests every model answers for itself.

vLLM's CPU LoRA kernels read a base-model token's "no adapter" index (-1) as the engine's last
adapter slot, so a base-model request batched beside adapter requests got that adapter's weights
(serve/null_adapter.py has the measurement). The session's engine is started as the appliance
starts it (`--max-loras` at its default); this module fills every slot with an adapter of its
own, each taught another answer, and then asks the base model and every adapter at once.
"""

from __future__ import annotations

import stat
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from airlock.config import Settings
from airlock.errors import InvalidInput
from airlock.serve.engine import EngineClient
from airlock.serve.null_adapter import WEIGHTS_FILE, write_null_adapter
from airlock.train.config import LoraTrainConfig
from airlock.train.recipe import finetune

SYSTEM = "You are the airlock assistant."
QUESTIONS = ("What is the code word?", "Name the password.", "Which colour do we use?", "Tell me the secret.")
WORDS = ("amber", "cobalt", "crimson", "jade")  # one adapter each; no other test loads these names
ROUNDS = 8  # each model asked each question this many times, all at once
CLIENTS = 16  # concurrent clients: enough that the engine batches models together


def lessons(word: str) -> list[list[dict]]:
    return [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
             {"role": "assistant", "content": f"The word is {word} {word} {word}."}] for question in QUESTIONS]


@pytest.fixture(scope="module")
def mixing_adapters(vllm_server, tmp_path_factory) -> list[str]:
    """As many adapters as the engine has slots, each answering every question with its own word."""
    assert len(WORDS) >= vllm_server.settings.vllm_max_loras, "the engine's last slot must be filled"
    root = tmp_path_factory.mktemp("mixing")
    names = []
    for seed, word in enumerate(WORDS):
        recipe = LoraTrainConfig(epochs=60, rank=8, alpha=16, learning_rate=0.01, batch_size=4, seed=seed)
        folder = finetune(vllm_server.model_dir, lessons(word), recipe, root / word).adapter_dir
        vllm_server.load_adapter(f"mixing-{word}", folder)
        names.append(f"mixing-{word}")
    yield names
    for name in names:
        vllm_server.unload_adapter(name)


class Asker:
    """Greedy chat answers from the engine, one connection per thread (as separate clients)."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.local = settings, threading.local()

    def __call__(self, model: str, question: str) -> str:
        if not hasattr(self.local, "client"):
            self.local.client = EngineClient(self.settings)
        body = {"model": model, "max_tokens": 12, "temperature": 0,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}
        resp = self.local.client.request("POST", "/v1/chat/completions", json=body, timeout=300)
        assert resp.status_code == 200, f"{model}: HTTP {resp.status_code} {resp.text[:200]}"
        return resp.json()["choices"][0]["message"]["content"]


@pytest.mark.vllm
@pytest.mark.slow
def test_base_and_adapters_answer_for_themselves_when_batched_together(vllm_server, mixing_adapters):
    """Were the defect back, the base model's concurrent answers would be an adapter's trained
    answer ("The word is jade...") instead of its own, and the failure names whose they were."""
    ask = Asker(vllm_server.settings)
    models = [vllm_server.served_name, *mixing_adapters]
    # Asked one at a time, in this order, each model's answers are its own, and every adapter
    # has been used, so every slot of the engine holds one of them.
    alone = {(model, q): ask(model, q) for model in models for q in QUESTIONS}
    for q in QUESTIONS:
        assert len({alone[(model, q)] for model in models}) == len(models), f"two models answer {q!r} alike"
    jobs = [(model, q) for _ in range(ROUNDS) for q in QUESTIONS for model in models]
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(lambda job: ask(*job), jobs))
    wrong = Counter()
    for (model, q), answer in zip(jobs, answers):
        if answer != alone[(model, q)]:
            whose = [other for other in models if alone[(other, q)] == answer] or ["no model"]
            wrong[f"{model} answered as {whose[0]}"] += 1
    assert not wrong, f"of {ROUNDS * len(QUESTIONS)} concurrent requests per model: {dict(wrong)}"


def test_the_zero_adapter_changes_nothing(reference_model_dir, tmp_path):
    """If it were not zero, the base model served through it would answer otherwise: its logits
    through PEFT are compared with the bare model's."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = write_null_adapter(reference_model_dir, tmp_path / "zero")
    with safe_open(folder / WEIGHTS_FILE, framework="numpy") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    assert sorted(tensors) == ["base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight",
                               "base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight"]
    assert all(not t.any() for t in tensors.values())
    base = AutoModelForCausalLM.from_pretrained(reference_model_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        bare = base(ids).logits
        through = PeftModel.from_pretrained(base, folder)(ids).logits
    assert torch.equal(bare, through)


def test_a_model_without_a_plain_linear_layer_is_refused_by_name(tmp_path):
    """A base model whose zero adapter cannot be built must not be served on the CPU unguarded."""
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InvalidInput, match=rf"{tmp_path} has neither model.safetensors"):
        write_null_adapter(tmp_path, tmp_path / "zero")
    save_file({"model.embed_tokens.weight": np.zeros((4, 2), dtype=np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(InvalidInput, match=rf"{tmp_path}: no layer named o_proj"):
        write_null_adapter(tmp_path, tmp_path / "zero")
    assert not (tmp_path / "zero").exists()


def test_the_zero_adapter_keeps_the_home_private(reference_model_dir, tmp_path):
    """Were its folder or files open to other users, the engine's next start on this home would be
    refused by the home's own check."""
    from airlock.serve.vllm_server import VllmServer

    settings = Settings(home=tmp_path / "home", models_dir=reference_model_dir.parent,
                        serve_base_model=reference_model_dir.name)
    settings.ensure_dirs()
    server = VllmServer(settings, gpu=False)
    server._prepare()
    settings.ensure_dirs()  # what every start does first; refuses a home open to others
    assert stat.S_IMODE(server.null_adapter_dir.stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in server.null_adapter_dir.iterdir()} == {0o600}


def test_cpu_engine_serves_the_base_name_as_the_zero_adapter(tmp_path):
    from airlock.serve.vllm_server import VllmServer

    settings = Settings(home=tmp_path, serve_base_model="airlock-tiny")
    cpu = VllmServer(settings, gpu=False).command()
    assert cpu[cpu.index("--served-model-name") + 1] == "airlock-tiny.weights"
    assert cpu[cpu.index("--lora-modules") + 1] == f"airlock-tiny={settings.engine_dir / 'base-as-adapter'}"
    # The GPU kernels skip a base-model token themselves: there the base weights keep their name.
    gpu = VllmServer(settings, gpu=True).command()
    assert gpu[gpu.index("--served-model-name") + 1] == "airlock-tiny" and "--lora-modules" not in gpu


@pytest.mark.vllm
def test_the_engine_computes_lora_once_per_adapter(vllm_server):
    """vLLM loaded airlock's CPU LoRA kernels (serve/cpu_lora_kernels.py) through its plugin entry
    point, so the concurrent answers above went through them."""
    from airlock.serve.cpu_lora_kernels import LOADED_MESSAGE

    assert LOADED_MESSAGE in vllm_server.log_path.read_text(errors="replace")
