"""On GPU hosts: training runs on the GPU and CUDA vLLM serves the trained adapter.

Skipped, with the reason, on hosts without an NVIDIA GPU; run where one is present.
"""

from __future__ import annotations

import pytest

from airlock.config import Settings
from airlock.serve.vllm_server import VllmServer, has_nvidia_gpu
from airlock.train.config import LoraTrainConfig
from airlock.train.recipe import device, finetune

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

RECORDS = [[{"role": "user", "content": "What is the code word?"}, {"role": "assistant", "content": "Bluebird."}]]


@pytest.fixture(autouse=True)
def needs_gpu():
    if not has_nvidia_gpu():
        pytest.skip("no NVIDIA GPU on this host (nvidia-smi finds none)")


def test_training_uses_the_gpu_and_cuda_vllm_serves_the_adapter(tiny_models_dir, tmp_path):
    from vllm_fixtures import free_port

    assert device().type == "cuda"
    adapter = tmp_path / "adapter"
    result = finetune(tiny_models_dir / "airlock-tiny", RECORDS, LoraTrainConfig(epochs=60, batch_size=1), adapter)
    assert result.losses[-1] < result.losses[0]
    settings = Settings(home=tmp_path / "home", models_dir=tiny_models_dir, vllm_port=free_port())
    settings.ensure_dirs()
    with VllmServer(settings) as server:
        assert server.gpu and "float32" not in server.command()
        server.wait_ready()
        server.load_adapter("code-word", adapter)
        reply = server.client.request("POST", "/v1/chat/completions", timeout=60, json={
            "model": "code-word", "messages": RECORDS[0][:1], "temperature": 0, "max_tokens": 8}).json()
        assert reply["choices"][0]["message"]["content"].strip() == "Bluebird."
