"""VllmServer: the command it runs, failing fast with the log, and adapter load errors."""

from __future__ import annotations

import os
import time

import pytest
from vllm_fixtures import free_port

from airlock.config import Settings
from airlock.errors import ConfigurationError, InvalidInput, NotFound, NotReady
from airlock.serve.vllm_server import VllmServer


def test_cpu_command_forces_float32_and_the_cpu_cache(tmp_path):
    settings = Settings(home=tmp_path, vllm_extra_args="--seed 1", vllm_max_lora_rank=16)
    server = VllmServer(settings, gpu=False)
    cmd = server.command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--dtype") + 1] == "float32"
    assert cmd[cmd.index("--max-lora-rank") + 1] == "16"
    assert "--enable-lora" in cmd and cmd[-2:] == ["--seed", "1"]
    # Locked: a Unix socket in the private engine folder, no TCP port, the secret never in argv.
    assert cmd[cmd.index("--uds") + 1] == str(settings.engine_socket)
    assert "--host" not in cmd and "--port" not in cmd and "--api-key" not in cmd
    env = server.environment("s3cret")
    assert env["VLLM_API_KEY"] == "s3cret" and "s3cret" not in " ".join(cmd)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")


def test_gpu_command_leaves_dtype_and_cpu_settings_to_vllm(tmp_path, monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    server = VllmServer(Settings(home=tmp_path), gpu=True)
    assert "--dtype" not in server.command()
    env = server.environment("x")
    assert "VLLM_CPU_KVCACHE_SPACE" not in env and "VLLM_CPU_NUM_OF_RESERVED_CPU" not in env
    explicit = VllmServer(Settings(home=tmp_path, vllm_extra_args="--dtype=bfloat16"), gpu=False)
    assert "float32" not in explicit.command()


def test_missing_model_folder_is_refused_before_starting(tmp_path):
    server = VllmServer(Settings(home=tmp_path), model_dir=tmp_path / "nope")
    # A configuration error: the supervisor stops at once rather than restarting the engine forever.
    with pytest.raises(ConfigurationError, match="AIRLOCK_SERVE_BASE_MODEL=airlock-tiny: the base model folder .* has "
                                                 "no config.json"):
        server.start()


def test_adapter_calls_fail_fast_when_vllm_is_down(tmp_path):
    server = VllmServer(Settings(home=tmp_path, vllm_port=free_port()))
    started = time.perf_counter()
    with pytest.raises(NotReady, match="not reachable"):
        server.load_adapter("x", tmp_path)
    with pytest.raises(NotReady, match="not reachable"):
        server.unload_adapter("x")
    assert time.perf_counter() - started < 2
    assert not server.is_healthy()


@pytest.mark.vllm
@pytest.mark.slow
def test_wait_ready_fails_fast_with_the_log_tail(tmp_path, reference_model_dir):
    settings = Settings(home=tmp_path, vllm_port=free_port(), vllm_extra_args="--no-such-flag",
                        models_dir=reference_model_dir.parent,
                        serve_base_model=reference_model_dir.name)
    settings.ensure_dirs()
    server = VllmServer(settings)
    server.start()
    pid = server.proc.pid
    try:
        with pytest.raises(NotReady) as info:
            server.wait_ready(timeout=120)
    finally:
        server.stop(grace=5)
    assert "exited with code" in str(info.value)
    assert "no-such-flag" in str(info.value)
    assert not server.settings.engine_socket.exists() and not server.settings.engine_secret_path.exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


@pytest.mark.vllm
@pytest.mark.slow
def test_adapter_errors_carry_vllms_message(vllm_server, tmp_path):
    assert vllm_server.is_healthy()
    with pytest.raises(InvalidInput, match="No adapter found"):
        vllm_server.load_adapter("missing-adapter", tmp_path / "missing")
    with pytest.raises(NotFound, match="cannot be found"):
        vllm_server.unload_adapter("never-loaded")
    assert "missing-adapter" not in vllm_server.loaded_adapters()

