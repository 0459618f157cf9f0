"""The engine (vLLM) parses every inference request; whoever makes it run code (an inference key
holder with an exploit) gets its environment. The S3 store's credentials must not be in it, nor in
a training job's, while the services that use the store (worker, gateway) still get them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from airlock.config import Settings
from airlock.serve.vllm_server import VllmServer
from airlock.supervisor.services import NAMES, Service
from airlock.workflow.training import child_env

STORE_ENV = {"AIRLOCK_STORE_BACKEND": "s3", "AIRLOCK_S3_ENDPOINT": "10.0.0.9:9000",
             "AIRLOCK_S3_ACCESS_KEY": "store-access-id", "AIRLOCK_S3_SECRET_KEY": "store-secret-never-in-vllm"}


@pytest.fixture
def store_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in STORE_ENV.items():
        monkeypatch.setenv(name, value)


def s3_names(env: dict[str, str]) -> set[str]:
    return {name for name in env if name.startswith("AIRLOCK_S3_")}


def test_only_the_services_that_use_the_store_get_its_keys(store_env: None, tmp_path: Path) -> None:
    """If the attack succeeded, a reviewer would see AIRLOCK_S3_SECRET_KEY in the engine's or a
    training job's environment."""
    envs = {name: Service(name, tmp_path / f"{name}.log").environment() for name in NAMES}
    assert s3_names(envs["engine"]) == set()
    assert s3_names(envs["worker"]) == s3_names(envs["gateway"]) == {
        "AIRLOCK_S3_ENDPOINT", "AIRLOCK_S3_ACCESS_KEY", "AIRLOCK_S3_SECRET_KEY"}
    # Started alone (`airlock engine` under a unit that gives it the shared settings file) vLLM
    # still gets none: the engine drops them from what it hands to vLLM.
    assert s3_names(VllmServer(Settings(home=tmp_path / "home"), gpu=False).environment("s")) == set()
    assert s3_names(child_env(1, [])) == set()


def test_a_real_engine_process_holds_no_store_key(store_env: None, tmp_path: Path, tiny_models_dir: Path) -> None:
    """If the attack succeeded, a reviewer would read the store's secret key in the running vLLM
    process's /proc/PID/environ."""
    home = tmp_path / "home"
    env = {"AIRLOCK_HOME": str(home), "AIRLOCK_MODELS_DIR": str(tiny_models_dir), "AIRLOCK_STORE_BACKEND": "local"}
    engine = Service("engine", tmp_path / "engine.log", env=env)
    engine.start()
    try:
        deadline = time.monotonic() + 120
        proc = Path(f"/proc/{engine.pid}")
        # `airlock engine` replaces itself with vLLM (same pid): wait for that exec.
        while b"vllm.entrypoints" not in (proc / "cmdline").read_bytes():
            assert engine.exited() is None, (tmp_path / "engine.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the engine did not exec vLLM"
            time.sleep(0.1)
        environ = (proc / "environ").read_bytes()
    finally:
        engine.stop()
    names = {entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry}
    assert "VLLM_API_KEY" in names  # it is the engine's environment that was read
    assert s3_names(dict.fromkeys(names)) == set()
    assert b"store-secret-never-in-vllm" not in environ
