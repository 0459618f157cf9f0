"""Any Hugging Face folder in the models folder works like the reference model: a Qwen2 model
built by the same command is fine-tuned, evaluated, promoted and served under an alias."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from e2e_support import AIRLOCK, QA, QUICKSTART, running_appliance
from openai import OpenAI

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def test_qwen2_model_goes_the_whole_way(tmp_path, tiny_models_dir):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(tiny_models_dir / "airlock-tiny", models / "airlock-tiny")
    env = dict(os.environ, AIRLOCK_MODELS_DIR=str(models), AIRLOCK_HOME=str(tmp_path / "home"))
    subprocess.run([AIRLOCK, "models", "build-reference", "--name", "tiny-qwen2", "--arch", "qwen2"],
                   env=env, check=True, capture_output=True, timeout=600)
    assert "Qwen2ForCausalLM" in (models / "tiny-qwen2" / "config.json").read_text()

    with running_appliance(tmp_path / "home", models, AIRLOCK_SERVE_BASE_MODEL="tiny-qwen2") as appliance:
        appliance.cli("gate", "policy", "set", "qwen-assistant", "--approvals", "0")
        appliance.cli("workflow", "run", str(QUICKSTART), "--set", "base_model=tiny-qwen2",
                      "--set", "alias=qwen-assistant", "--wait")
        client = OpenAI(base_url=appliance.gateway_url + "/v1", api_key=appliance.new_key(), max_retries=0)
        assert {"tiny-qwen2", "qwen-assistant"} <= {m.id for m in client.models.list().data}
        hits = 0
        for messages in QA:
            reply = client.chat.completions.create(model="qwen-assistant", messages=messages[:-1],
                                                   temperature=0, max_tokens=40)
            hits += reply.choices[0].message.content.strip() == messages[-1]["content"]
        assert hits >= len(QA) - 1
