"""A base model folder whose chat template never finishes (a local user's, or a carried one) is
named in `POST /api/runs`: the gateway checks every record through that template, so the template
must be rendered with a limit, away from the gateway, and the request must end in a clear 400."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from gateway_support import run_gateway
from vllm_fixtures import free_port

from airlock.config import Settings
from airlock.models.chat_render import TEMPLATE_MAX_BYTES
from airlock.models.chat_tokens import ChatTokenizer

# Ten billion turns of an empty loop: hours in Jinja. Each range stays under the sandbox's own cap.
ENDLESS = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"
RECORD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
LIMIT_S = 2.0


def hostile_model(models_dir: Path, tiny: Path, template: str) -> Path:
    folder = models_dir / "hostile"
    shutil.copytree(tiny, folder)
    (folder / "chat_template.jinja").write_text(template)
    return folder


@pytest.fixture
def gateway(tmp_path: Path, tiny_models_dir: Path):
    models = tmp_path / "models"
    models.mkdir()
    hostile_model(models, tiny_models_dir / "airlock-tiny", ENDLESS)
    settings = Settings(home=tmp_path / "home", models_dir=models, gateway_port=free_port(),
                        chat_template_timeout_s=LIMIT_S)
    yield from run_gateway(settings)


def test_an_endless_template_is_cut_off_and_the_gateway_keeps_answering(gateway) -> None:
    """If the attack succeeded, a reviewer would see `POST /api/runs` hang for hours (holding a
    worker thread of the gateway and its CPU) instead of a 400 naming the model and the limit."""
    headers = {"Authorization": f"Bearer {gateway.key}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=120) as client:
        upload = client.post("/api/datasets", params={"name": "greetings"}, content=json.dumps(RECORD) + "\n")
        assert upload.status_code == 201, upload.text
        answer: dict = {}

        def submit() -> None:
            started = time.monotonic()
            spec = {"name": "t", "base_model": "hostile", "dataset": "greetings",
                    "stages": [{"name": "finetune", "uses": "finetune.lora", "with": {"rank": 4}}]}
            answer["response"] = client.post("/api/runs", json={"spec": spec})
            answer["took"] = time.monotonic() - started

        thread = threading.Thread(target=submit)
        thread.start()
        health = []
        while thread.is_alive():
            started = time.monotonic()
            assert client.get("/healthz").status_code == 200
            health.append(time.monotonic() - started)
            time.sleep(0.2)
        thread.join()
    response = answer["response"]
    assert response.status_code == 400, response.text
    text = response.text
    assert "'hostile'" in text and f"within {LIMIT_S:g} s" in text and "AIRLOCK_CHAT_TEMPLATE_TIMEOUT_S" in text
    assert answer["took"] < 60  # the limit plus the renderer's start on a busy host, not hours
    assert len(health) >= 3 and max(health) < 1.0, health  # the gateway answered all along
    assert gateway.meta.db["runs"].count == 0  # nothing was queued


def test_an_oversized_template_is_refused_unrendered(tmp_path: Path, tiny_models_dir: Path) -> None:
    """If size were not checked, a reviewer would see a template of megabytes compiled and run."""
    folder = hostile_model(tmp_path, tiny_models_dir / "airlock-tiny", "{{ 'x' }}" * (TEMPLATE_MAX_BYTES // 8))
    refused = rf"'hostile': its chat template is \d+ bytes, more than the {TEMPLATE_MAX_BYTES}"
    with pytest.raises(Exception, match=refused):
        ChatTokenizer(folder)


def test_a_template_that_builds_a_huge_string_is_stopped(tmp_path: Path, tiny_models_dir: Path) -> None:
    """If memory were not bounded, a reviewer would see the renderer grow by gigabytes; instead the
    record is refused (by the size or memory limit, or the time limit) and the renderer stops."""
    huge = ("{% set s = namespace(t='x' * 1000000) %}{% for i in range(99999) %}{% set s.t = s.t ~ s.t %}"
            "{% endfor %}{{ s.t }}")
    folder = hostile_model(tmp_path, tiny_models_dir / "airlock-tiny", huge)
    with ChatTokenizer(folder, timeout_s=20) as tokenizer:
        started = time.monotonic()
        with pytest.raises(Exception, match="MiB|within 20 s|characters"):
            tokenizer.render(RECORD["messages"])
        assert time.monotonic() - started < 60


def test_a_renderer_that_finished_in_time_serves_the_next_submission(tmp_path: Path, tiny_models_dir: Path) -> None:
    """If every submission started its own renderer, a reviewer would see a new process (and a
    second of imports) per submission; one that hit a limit must never be reused."""
    folder = tiny_models_dir / "airlock-tiny"
    with ChatTokenizer(folder) as first:
        first.render(RECORD["messages"])
        pid = first.renderer._child.proc.pid
    started = time.monotonic()
    with ChatTokenizer(folder) as second:
        second.render(RECORD["messages"])
        assert second.renderer._child.proc.pid == pid
    assert time.monotonic() - started < 5
    slow = hostile_model(tmp_path, folder, ENDLESS)
    with ChatTokenizer(slow, timeout_s=1) as tokenizer:
        with pytest.raises(Exception, match="within 1 s"):
            tokenizer.render(RECORD["messages"])
        assert tokenizer.renderer._child is None  # killed, not handed on
