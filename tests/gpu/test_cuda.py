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


def test_qlora_trains_a_4bit_base_on_the_gpu(tiny_models_dir, tmp_path):
    result = finetune(tiny_models_dir / "airlock-tiny", RECORDS * 4,
                      LoraTrainConfig(method="qlora", epochs=20, batch_size=2, learning_rate=0.01), tmp_path / "q")
    assert result.losses[-1] < result.losses[0] and (tmp_path / "q" / "adapter_model.safetensors").exists()


def test_the_engine_sleeps_while_training_uses_its_gpu_and_serves_after(tiny_models_dir, tmp_path):
    from vllm_fixtures import free_port

    from airlock.workflow.gpu_share import gpu_totals_mib
    from airlock.workflow.worker_metrics import gpu_memory

    settings = Settings(home=tmp_path / "home", models_dir=tiny_models_dir, vllm_port=free_port(),
                        engine_sleep_for_training=True, vllm_gpu_memory_utilization=0.5)
    settings.ensure_dirs()
    with VllmServer(settings) as server:
        assert "--enable-sleep-mode" in server.command()
        server.wait_ready()
        awake_used = gpu_memory()[0][1]
        server.client.sleep(level=1)
        assert server.client.is_sleeping()
        asleep_used = gpu_memory()[0][1]
        assert asleep_used < awake_used / 2, (awake_used, asleep_used)
        assert asleep_used < gpu_totals_mib()[0] * 2**20  # training now has the GPU's memory
        result = finetune(tiny_models_dir / "airlock-tiny", RECORDS, LoraTrainConfig(epochs=30, batch_size=1),
                          tmp_path / "adapter")
        assert result.losses[-1] < result.losses[0]
        server.client.wake_up()
        assert not server.client.is_sleeping()
        reply = server.client.request("POST", "/v1/completions", timeout=60, json={
            "model": server.served_name, "prompt": "hello", "max_tokens": 4}).json()
        assert reply["choices"][0]["text"] is not None


def test_out_of_memory_on_the_gpu_fails_the_run_with_the_reason_and_frees_the_gpu(airlock, tiny_models_dir,
                                                                                 tmp_path):
    """The run's memory_gb is its share of the GPU (torch's per-process fraction): a batch that
    needs more raises CUDA's out-of-memory error in the job, which ends and leaves the GPU."""
    import subprocess

    from worker_support import WorkerProcess, events, long_records, submit_training, wait_status

    data = long_records(tmp_path / "long.jsonl", words=400)
    run_id = submit_training(airlock, tmp_path, "gpu-oom", dataset=data, resources={"gpus": 1, "memory_gb": 0.25},
                             batch_size=64, max_length=512, epochs=1)
    worker = WorkerProcess(airlock.settings.home, AIRLOCK_WORKER_GPUS="0")
    try:
        run = wait_status(airlock, run_id, "failed", "succeeded", timeout=300)
    finally:
        worker.stop()
    assert run["status"] == "failed"
    assert "out of memory on GPU" in run["error"] and "within the run's limit of 256 MiB of GPU" in run["error"]
    assert "use method: qlora" in run["error"]
    pid = events(airlock, run_id, "started")[0]["pid"]
    apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert str(pid) not in apps, "the failed job still holds GPU memory"
