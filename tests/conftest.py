"""Shared fixtures: a fresh appliance home (real SQLite, real folder store) per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airlock.config import REPO_ROOT, Settings
from airlock.context import Airlock

pytest_plugins = ["vllm_fixtures"]

EXAMPLES = REPO_ROOT / "examples"
# podman on hosts such as CI's (no systemd as PID 1, a cgroup mode crun refuses, no CAP_SYS_RESOURCE)
# needs the repository's settings for it (docs/bundle.md), unless the environment names others.
os.environ.setdefault("CONTAINERS_CONF", str(REPO_ROOT / "images" / "containers.conf"))


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    home = tmp_path / "home"
    monkeypatch.setenv("AIRLOCK_HOME", str(home))
    return Settings(home=home)


@pytest.fixture
def airlock(settings: Settings) -> Airlock:
    return Airlock.open(settings)


@pytest.fixture(scope="session")
def tiny_models_dir() -> Path:
    """The repo's offline_models/ with the reference model in it (install.sh builds it; so do we)."""
    from vllm_fixtures import ensure_reference_model

    return ensure_reference_model().parent
