"""`airlock up` stops at once, naming the setting, when a service cannot start for a configuration
error, instead of restarting it every 30 s while it waits for a readiness that never comes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airlock.config import Settings
from airlock.errors import ConfigurationError
from airlock.supervisor.supervisor import Supervisor
from vllm_fixtures import free_port


@pytest.fixture
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_models_dir: Path) -> Settings:
    # The services are child processes: they read their settings from the environment, as in production.
    monkeypatch.setenv("AIRLOCK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRLOCK_MODELS_DIR", str(tiny_models_dir))
    monkeypatch.setenv("AIRLOCK_GATEWAY_PORT", str(free_port()))
    return Settings()


def test_the_engine_service_alone_exits_with_the_configuration_code(configured: Settings, tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "airlock", "engine"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "AIRLOCK_SERVE_BASE_MODEL": "no-such-model"}, check=False)
    assert done.returncode == ConfigurationError.exit_code == 78, done.stderr
    said = " ".join(done.stderr.split())
    assert "AIRLOCK_SERVE_BASE_MODEL=no-such-model" in said and str(configured.models_dir) in said


def test_up_refuses_a_missing_served_model_before_starting_anything(configured: Settings, monkeypatch):
    monkeypatch.setenv("AIRLOCK_SERVE_BASE_MODEL", "no-such-model")
    settings = Settings()
    with pytest.raises(ConfigurationError, match="AIRLOCK_SERVE_BASE_MODEL=no-such-model"):
        Supervisor(settings, on_status=lambda _: None).start()
    assert not (settings.run_dir / "status.json").exists() and not (settings.run_dir / "engine.log").exists()


def test_a_service_that_exits_for_its_configuration_stops_up_at_once(configured: Settings):
    """The supervisor's own check passes; the engine's process is started with a setting of its own
    that names a missing model (as a unit file or a container's environment could), and exits 78."""
    said: list[str] = []
    supervisor = Supervisor(configured, on_status=said.append)
    supervisor.services["engine"].env["AIRLOCK_SERVE_BASE_MODEL"] = "no-such-model"
    started = time.monotonic()
    try:
        supervisor.start()
        with pytest.raises(ConfigurationError, match="engine cannot start: its configuration is wrong") as caught:
            supervisor.wait_ready()
    finally:
        supervisor.stop()
    assert time.monotonic() - started < 60
    assert "AIRLOCK_SERVE_BASE_MODEL=no-such-model" in " ".join(str(caught.value).split())
    assert supervisor.services["engine"].restarts == 0 and not any("restarting" in line for line in said)
    assert all(service.proc is None for service in supervisor.services.values())


def test_each_replica_of_the_engine_list_is_a_service_with_its_folder_and_placement(configured: Settings,
                                                                                    monkeypatch):
    monkeypatch.setenv("AIRLOCK_ENGINES", '[{"model": "airlock-tiny", "replicas": 2, "cpus": ["0", "1"]}]')
    supervisor = Supervisor(Settings(), on_status=lambda _: None)
    assert list(supervisor.services) == ["engine", "engine:airlock-tiny-1", "worker", "gateway"]
    first, second = supervisor.services["engine"], supervisor.services["engine:airlock-tiny-1"]
    assert first.kind == second.kind == "engine" and second.log_path.name == "engine-airlock-tiny-1.log"
    assert first.env["AIRLOCK_ENGINE_HOME"] == str(configured.engine_dir)
    assert second.env["AIRLOCK_ENGINE_HOME"] == str(configured.run_dir / "engines" / "airlock-tiny-1")
    assert (first.env["VLLM_CPU_OMP_THREADS_BIND"], second.env["VLLM_CPU_OMP_THREADS_BIND"]) == ("0", "1")


def test_up_refuses_an_engine_list_naming_a_missing_model_before_starting_anything(configured: Settings,
                                                                                  monkeypatch):
    monkeypatch.setenv("AIRLOCK_ENGINES", '[{"model": "airlock-tiny"}, {"model": "no-such-model"}]')
    settings = Settings()
    with pytest.raises(ConfigurationError, match="AIRLOCK_SERVE_BASE_MODEL=no-such-model"):
        Supervisor(settings, on_status=lambda _: None).start()
    assert not (settings.run_dir / "status.json").exists()
