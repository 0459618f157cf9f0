"""pytest fixtures for the real vLLM server: ONE server for the whole session, on the reference model.

Starting vLLM costs tens of seconds and a few GiB, so every test that needs it shares the
session's server and stays out of each other's way by using its own adapter and alias names.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.config import REPO_ROOT, Settings

REFERENCE_MODEL = "airlock-tiny"
REFERENCE_DIR = REPO_ROOT / "offline_models" / REFERENCE_MODEL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_reference_model() -> Path:
    """The reference model folder; install.sh builds it, and so does this when it is missing or
    was built with another chat template (tests rely on the template the code now writes)."""
    from airlock.models.reference import CHAT_TEMPLATE, build_reference_model

    if not (REFERENCE_DIR / "config.json").is_file() or _chat_template(REFERENCE_DIR) != CHAT_TEMPLATE:
        build_reference_model(REFERENCE_DIR, overwrite=REFERENCE_DIR.exists())
    return REFERENCE_DIR


def _chat_template(folder: Path) -> str | None:
    try:
        return json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="session")
def reference_model_dir() -> Path:
    return ensure_reference_model()


@pytest.fixture(scope="session")
def vllm_server(reference_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A running vLLM OpenAI server (airlock.serve.vllm_server.VllmServer) serving the reference
    model with runtime LoRA loading, locked like the appliance's engine (its Unix socket and secret
    in `.settings.engine_dir`); `.served_name`, `.client`, `.load_adapter(...)`."""
    from airlock.serve.vllm_server import VllmServer

    home = tmp_path_factory.mktemp("vllm-home")
    settings = Settings(home=home, models_dir=reference_model_dir.parent,
                        serve_base_model=reference_model_dir.name)
    settings.ensure_dirs()
    server = VllmServer(settings)
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
