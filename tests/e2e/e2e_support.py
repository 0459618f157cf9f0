"""What the e2e tests share: the CLI runner of a running appliance and the quickstart data."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml
from vllm_fixtures import free_port

from airlock.config import REPO_ROOT

AIRLOCK = str(Path(sys.executable).with_name("airlock"))
QUICKSTART = REPO_ROOT / "examples" / "quickstart.yaml"
# The test root's keys are sealed with this; a real ceremony asks a person for theirs.
PASSPHRASE = b"a passphrase for the test root only"
QA = [json.loads(line)["messages"] for line in (REPO_ROOT / "examples/datasets/quickstart-eval.jsonl").read_text().splitlines()]


@dataclass
class RunningAppliance:
    env: dict
    home: Path
    gateway_url: str
    proc: subprocess.Popen

    def cli(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        result = subprocess.run([AIRLOCK, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                                cwd=REPO_ROOT)
        if check and result.returncode != 0:
            raise AssertionError(f"airlock {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def new_key(self, name: str = "test") -> str:
        out = self.cli("apikey", "create", "--name", name).stdout
        return re.search(r"ak-[A-Za-z0-9_-]+", out).group(0)


def candidate_workflow(folder: Path) -> Path:
    """The quickstart without promote and serve, with absolute paths, written into `folder`."""
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec["dataset"] = str(QUICKSTART.parent / spec["dataset"])
    spec["stages"] = [s for s in spec["stages"] if s["uses"] in ("finetune.lora", "evaluate.compare")]
    for stage in spec["stages"]:
        if "eval_set" in stage.get("with", {}):
            stage["with"]["eval_set"] = str(QUICKSTART.parent / stage["with"]["eval_set"])
    path = folder / "candidate.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@contextmanager
def running_appliance(home: Path, models_dir: Path, **settings: str) -> Iterator[RunningAppliance]:
    """`airlock up` on free ports with its own home, ready (vLLM answering) when yielded."""
    env = dict(os.environ, AIRLOCK_HOME=str(home), AIRLOCK_GATEWAY_PORT=str(free_port()),
               AIRLOCK_VLLM_PORT=str(free_port()), AIRLOCK_MODELS_DIR=str(models_dir), **settings)
    gateway_url = f"http://127.0.0.1:{env['AIRLOCK_GATEWAY_PORT']}"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)  # airlock refuses a home others can open
    log_path = home.parent / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([AIRLOCK, "up"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        try:
            _wait_ready(proc, gateway_url, log_path)
            running = RunningAppliance(env=env, home=home, gateway_url=gateway_url, proc=proc)
            # The quickstart's alias, unprotected as the demo makes it: the tests of the gate
            # itself protect aliases of their own.
            running.cli("gate", "policy", "set", "quickstart-assistant", "--approvals", "0")
            yield running
        finally:
            stop(proc, timeout=60)


def stop(proc: subprocess.Popen, *, timeout: float) -> None:
    """SIGTERM (the supervisor stops its services), then SIGKILL past `timeout` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_ready(proc: subprocess.Popen, gateway_url: str, log_path: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"airlock up exited {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{gateway_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"the appliance did not become ready in {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")


def can_isolate() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace (unshare -n)"
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "needs the unshare and ip commands"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare -n is not permitted here: {probe.stderr.strip()}"
    return None


def run_toward_alias(gateway_url: str, trainer_key: str, *, name: str, alias: str, seed: int,
                     epochs: int = 40) -> dict:
    """A trainer's run over /api toward `alias`, to its end: its own data (`facts`, uploaded by the
    caller) and evaluation, a workflow gate that asks nothing (the alias's policy applies), and the
    serve stage that proposes the candidate. `seed` must be the caller's own: the same data,
    settings and seed make the same adapter, and a module that revokes what it trains must not
    revoke another module's."""
    spec = {"name": name, "base_model": "airlock-tiny", "dataset": "facts",
            "stages": [{"name": "finetune", "uses": "finetune.lora",
                        "with": {"epochs": epochs, "rank": 8, "alpha": 16, "learning_rate": 0.01, "batch_size": 1,
                                 "seed": seed}},
                       {"name": "evaluate", "uses": "evaluate.compare", "needs": ["finetune"],
                        "with": {"eval_set": "facts", "min_exact_match": 0}},
                       {"name": "promote", "uses": "gate.promote", "needs": ["evaluate"],
                        "with": {"min_exact_match": 0}},
                       {"name": "serve", "uses": "serve.vllm", "needs": ["promote"], "with": {"alias": alias}}]}
    headers = {"Authorization": f"Bearer {trainer_key}"}
    queued = httpx.post(f"{gateway_url}/api/runs", headers=headers, json={"spec": spec}, timeout=600)
    assert queued.status_code == 202, queued.text
    run_id = queued.json()["run_id"]
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        run = httpx.get(f"{gateway_url}/api/runs/{run_id}", headers=headers, timeout=60).json()
        if run["status"] in ("succeeded", "failed"):
            return run
        time.sleep(2)
    raise AssertionError(f"run {run_id} did not finish in 900 s")
