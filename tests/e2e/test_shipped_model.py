"""The shipped instruct model, smollm2-135m-instruct, end to end on real parts: `airlock demo` as a
user runs it (the appliance started serving the real model, the quickstart facts fine-tuned,
evaluated through the engine, promoted and served), then the official openai client with the key
the demo printed asks the alias a site fact and the base model a general question.

Its own appliance: the session appliance of tests/e2e serves airlock-tiny, and the engine serves
one base model. Select it with `-m real_model`."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from openai import OpenAI
from vllm_fixtures import free_port

from airlock.bundle.shipped_model import LOCK, NAME, ensure_shipped_model
from airlock.config import REPO_ROOT
from e2e_support import AIRLOCK, QA, stop

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.real_model]
ALIAS = "quickstart-assistant"
DEMO_BUDGET_S = 480  # the target is 240 s on two idle cores; a shared machine gets headroom
KEY = re.compile(r"API key for \S+ and \S+ \(inference only, shown once\): (ak-\S+)")


@pytest.fixture(scope="module")
def models_dir() -> Path:
    """The checkout's models folder with the shipped model converted (install.sh does it; so do we)."""
    folder = REPO_ROOT / "offline_models"
    ensure_shipped_model(folder / NAME, REPO_ROOT / LOCK, REPO_ROOT / ".venv" / ".airlock-models-wheel")
    return folder


@pytest.fixture(scope="module")
def demo(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`airlock demo` left serving, from an unrelated folder, with the wall time to its snippets."""
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ, AIRLOCK_HOME=str(home), AIRLOCK_GATEWAY_PORT=str(free_port()),
               AIRLOCK_MODELS_DIR=str(models_dir), COLUMNS="240")
    env.pop("AIRLOCK_SERVE_BASE_MODEL", None)
    started = time.monotonic()
    proc = subprocess.Popen([AIRLOCK, "demo"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=tmp_path_factory.mktemp("cwd"))
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "serving; Ctrl-C" in line:
                break
            if time.monotonic() - started > DEMO_BUDGET_S:
                break
        output = "".join(lines)
        elapsed = time.monotonic() - started
        assert "serving; Ctrl-C" in output, f"the demo did not finish in {elapsed:.0f} s:\n{output[-4000:]}"
        key = KEY.search(output)
        assert key, output
        yield {"env": env, "output": output, "elapsed": elapsed,
               "client": OpenAI(base_url=f"http://127.0.0.1:{env['AIRLOCK_GATEWAY_PORT']}/v1", api_key=key.group(1))}
    finally:
        stop(proc, timeout=90)


def ask(client: OpenAI, model: str, messages: list[dict]) -> str:
    reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=48)
    return reply.choices[0].message.content.strip()


def test_the_demo_serves_the_real_model_and_prints_both_snippets(demo) -> None:
    output = demo["output"]
    assert f"starting the engine ({NAME})" in output
    assert f'"model": "{ALIAS}"' in output and f'"model": "{NAME}"' in output
    assert "What is the capital of France?" in output
    print(f"airlock demo on {NAME}: snippets printed after {demo['elapsed']:.0f} s")


def test_the_alias_answers_the_trained_facts_exactly(demo) -> None:
    """If the fine-tune did not reach the served alias, its answers would differ from the facts."""
    answers = [ask(demo["client"], ALIAS, m[:-1]) for m in QA]
    # The demo's own snippet asks the first; the evaluation's bar (0.9 of eight) allows one miss.
    assert answers[0] == QA[0][-1]["content"], answers
    assert sum(a == m[-1]["content"] for a, m in zip(answers, QA, strict=True)) >= len(QA) - 1, answers


def test_the_base_model_answers_a_general_question(demo) -> None:
    """The base model is a real instruct model: it knows what the fine-tune never taught it."""
    answer = ask(demo["client"], NAME, [{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in answer, answer
    fact = QA[0]
    assert ask(demo["client"], NAME, fact[:-1]) != fact[-1]["content"]  # and not the site's facts


def test_the_candidate_scored_through_the_engine_is_taken_out_again(demo) -> None:
    """If the evaluation's unsigned copy stayed, the engine would hold an adapter no promotion
    record covers; only the promoted adapter's verified serving copy may remain."""
    serving = Path(demo["env"]["AIRLOCK_HOME"]) / "serving"
    left = sorted(p.name for p in serving.iterdir())
    assert left and not [name for name in left if name.startswith("eval-")], left


def test_a_demo_on_another_model_refuses_while_this_one_serves(demo) -> None:
    """If the demo went on, it would train on airlock-tiny while the engine serves smollm2: its
    adapter could never be served. It refuses naming both models and the setting instead."""
    result = subprocess.run([AIRLOCK, "demo", "--model", "airlock-tiny", "--exit"], env=demo["env"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 11, result.stdout + result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert f"serves base model '{NAME}'" in said and "asks for 'airlock-tiny'" in said
    assert "AIRLOCK_SERVE_BASE_MODEL" in said
