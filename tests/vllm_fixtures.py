"""pytest fixtures for the real vLLM server: ONE server for the whole session, on the reference model.

Starting vLLM costs tens of seconds and a few GiB, so every test that needs it shares the
session's server and stays out of each other's way by using its own adapter and alias names.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.config import REPO_ROOT, Settings

REFERENCE_MODEL = "airlock-tiny"
REFERENCE_DIR = REPO_ROOT / "offline_models" / REFERENCE_MODEL
# A build may be in progress in another process (install.sh, `airlock models build-reference`).
_BUILD_WAIT_S = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _build_in_progress() -> bool:
    """A live build writes beside the folder under `.NAME.building-PID` and renames it at the end."""
    for tmp in REFERENCE_DIR.parent.glob(f".{REFERENCE_MODEL}.building-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit():
            try:
                os.kill(int(pid), 0)
                return True
            except ProcessLookupError:
                continue
            except PermissionError:
                return True
    return False


def ensure_reference_model() -> Path:
    """The reference model folder: waited for while another process builds it, else built here."""
    from airlock.errors import InvalidInput
    from airlock.models.reference import build_reference_model

    deadline = time.monotonic() + _BUILD_WAIT_S
    while not _model_complete(REFERENCE_DIR):
        if not REFERENCE_DIR.exists() and not _build_in_progress():
            try:
                build_reference_model(REFERENCE_DIR)
            except InvalidInput:
                pass  # another process finished first; the loop checks its result
            continue
        if time.monotonic() > deadline:
            pytest.fail(f"reference model {REFERENCE_DIR} is incomplete; rebuild it with "
                        "`airlock models build-reference --force`")
        time.sleep(5)
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def reference_model_dir() -> Path:
    return ensure_reference_model()


@pytest.fixture(scope="session")
def vllm_server(reference_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A running vLLM OpenAI server (airlock.serve.vllm_server.VllmServer) serving the reference
    model with runtime LoRA loading; `.url`, `.port`, `.served_name`, `.load_adapter(...)`."""
    from airlock.serve.vllm_server import VllmServer

    home = tmp_path_factory.mktemp("vllm-home")
    settings = Settings(home=home, models_dir=reference_model_dir.parent,
                        serve_base_model=reference_model_dir.name, vllm_port=free_port())
    settings.ensure_dirs()
    server = VllmServer(settings)
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
