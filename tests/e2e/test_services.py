"""The three services under attack and failure, on a real appliance: kill -9 of the worker in
the middle of training (the run resumes under the new worker) and of the engine while aliases are served, a serving copy swapped on
disk, a stored adapter corrupted, SIGTERM while vLLM is still starting, and a stale pid file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from e2e_support import AIRLOCK, QA, QUICKSTART, REPO_ROOT, candidate_workflow
from openai import OpenAI
from vllm_fixtures import free_port
from waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
ALIAS = "quickstart-assistant"


def status(appliance) -> dict:
    return json.loads(appliance.cli("status", "--json").stdout)


def service_pid(appliance, name: str) -> int:
    return status(appliance)["services"][name]["pid"]


def ask(client: OpenAI, messages: list[dict], model: str = ALIAS) -> str:
    reply = client.chat.completions.create(model=model, messages=messages[:-1], temperature=0, max_tokens=48)
    return reply.choices[0].message.content.strip()


def answers_trained(client: OpenAI) -> bool:
    try:
        return ask(client, QA[0]) == QA[0][-1]["content"]
    except Exception:  # noqa: BLE001 - 503 while the engine restarts
        return False


def audit(appliance, action: str) -> list[dict]:
    out = appliance.cli("audit", "list", "--action", action, "--jsonl").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def served(appliance):
    appliance.cli("workflow", "run", str(QUICKSTART), "--wait")
    client = OpenAI(base_url=appliance.gateway_url + "/v1", api_key=appliance.new_key(), max_retries=0)
    assert answers_trained(client)
    return client


def test_status_shows_three_processes_and_the_gateway_has_no_torch(appliance):
    state = status(appliance)
    services = state["services"]
    [engine] = state["engines"]  # the engine list unset: one engine of one replica
    assert engine["replica"] == f"{engine['model']}-0" and engine["health"] == "ready", engine
    assert engine["running"] >= 0 and engine["waiting"] >= 0 and 0 <= engine["kv_cache_use"] <= 1
    assert isinstance(engine["adapters"], int)
    human = appliance.cli("status").stdout
    assert "replica" in human and "adapters" in human  # the table's head (cells may wrap at 80 columns)
    assert set(services) == {"engine", "worker", "gateway"}
    assert all(s["state"] in ("ready", "running") and s["pid"] for s in services.values())
    assert len({s["pid"] for s in services.values()}) == 3
    ready = httpx.get(f"{appliance.gateway_url}/readyz").json()
    assert ready["components"] == {"gateway": "ready", "engine": "ready", "worker": "alive"}
    maps = Path(f"/proc/{services['gateway']['pid']}/maps").read_text()
    assert "libtorch" not in maps


def test_kill_9_of_the_worker_during_training_resumes_the_run_and_serving_goes_on(appliance, served, tmp_path):
    spec = yaml.safe_load(candidate_workflow(tmp_path).read_text())
    spec["stages"] = spec["stages"][:1]
    spec["stages"][0]["with"] = {**spec["stages"][0].get("with", {}), "epochs": 1000, "seed": 77}
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_id = json.loads(appliance.cli("workflow", "run", str(path), "--json").stdout)["run_id"]

    def training() -> bool:
        run = json.loads(appliance.cli("workflow", "status", run_id, "--json").stdout)
        progress = run["stages"][0]["progress"] or {}
        return run["stages"][0]["status"] == "running" and progress.get("step", 0) > 0

    wait_for(training, 180, "training to start")
    old_worker = service_pid(appliance, "worker")
    results, stop = [], threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            try:
                results.append(ask(served, QA[1]) == QA[1][-1]["content"])
            except Exception as exc:  # noqa: BLE001 - any failure is a finding
                results.append(exc)

    threads = [threading.Thread(target=chatter) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1)
    os.kill(old_worker, signal.SIGKILL)

    def resumed() -> dict | None:
        run = json.loads(appliance.cli("runs", "show", run_id, "--json").stdout)
        return run if run["attempts"] == 2 and run["status"] == "running" else None

    run = wait_for(resumed, 90, "the run to resume under the new worker")
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(60)
    # The new worker found the run held by the dead one and queued it again, to resume from its
    # last checkpoint; the training then went on beside serving until cancelled.
    assert "killed by SIGKILL" in run["notice"] and str(old_worker) in run["notice"]
    assert "queued again to" in run["notice"]
    appliance.cli("runs", "cancel", run_id)
    cancelled = wait_for(lambda: (r := json.loads(appliance.cli("runs", "show", run_id, "--json").stdout))["status"]
                         == "cancelled" and r, 90, "the run to be cancelled")
    assert "cancelled at step" in cancelled["error"] and cancelled["checkpoints"]
    worker = status(appliance)["services"]["worker"]
    assert worker["pid"] != old_worker and worker["restarts"] >= 1 and worker["last_exit"] == "killed by SIGKILL"
    assert len(results) > 3 and all(r is True for r in results), results


def test_kill_9_of_the_engine_503s_at_once_then_aliases_return_through_verification(appliance, served):
    restored_before = len(audit(appliance, "alias.restored"))
    os.kill(service_pid(appliance, "engine"), signal.SIGKILL)
    started = time.perf_counter()
    resp = httpx.post(f"{appliance.gateway_url}/v1/chat/completions", timeout=10,
                      headers={"Authorization": f"Bearer {served.api_key}"},
                      json={"model": ALIAS, "messages": QA[0][:-1], "max_tokens": 8})
    assert resp.status_code == 503 and time.perf_counter() - started < 1.0
    wait_for(lambda: answers_trained(served), 300, "the alias to answer again", every=1)
    assert len(audit(appliance, "alias.restored")) > restored_before
    assert status(appliance)["services"]["engine"]["restarts"] >= 1


def _serving_copy(appliance, model_id: str) -> Path:
    copies = sorted((appliance.home / "serving").glob(f"{model_id}.*"))
    assert len(copies) == 1, copies
    return copies[0]


def _served_model(appliance) -> dict:
    return next(m for m in json.loads(appliance.cli("models", "list", "--json").stdout) if m.get("aliases") == ALIAS)


def test_a_serving_copy_swapped_on_disk_is_never_served(appliance, served, tmp_path):
    # A real substitute: another adapter trained on the same base, with other weights.
    # (a short fine-tune: it fails evaluation, but its adapter is registered and stored)
    appliance.cli("workflow", "run", str(candidate_workflow(tmp_path)), "--set", "finetune.seed=5",
                  "--set", "finetune.epochs=3", "--wait", check=False)
    latest = json.loads(appliance.cli("workflow", "list", "--json").stdout)[0]["id"]
    substitute_id = json.loads(appliance.cli("workflow", "status", latest, "--json").stdout)["stages"][0]["outputs"]["model_id"]
    model = _served_model(appliance)
    copy = _serving_copy(appliance, model["id"])
    weights = copy / "adapter_model.safetensors"
    substitute = _store_blob(appliance, substitute_id, "adapter_model.safetensors").read_bytes()
    assert substitute != weights.read_bytes()
    copy.chmod(0o700)
    weights.chmod(0o600)
    weights.write_bytes(substitute)

    os.kill(service_pid(appliance, "engine"), signal.SIGKILL)
    wait_for(lambda: answers_trained(served), 300, "the alias to answer again", every=1)
    # The reload made a fresh copy from the signed manifest; the swapped file is gone.
    fresh = _serving_copy(appliance, model["id"]) / "adapter_model.safetensors"
    assert fresh.read_bytes() != substitute
    assert fresh.stat().st_mode & 0o777 == 0o400
    assert all(ask(served, m) == m[-1]["content"] for m in QA[:3])


def _store_blob(appliance, model_id: str, name: str) -> Path:
    model = next(m for m in json.loads(appliance.cli("models", "list", "--json").stdout) if m["id"] == model_id)
    tree_digest = model["tree_digest"][7:]
    tree = json.loads((appliance.home / "store/blobs/sha256" / tree_digest[:2] / tree_digest).read_text())
    digest = tree["files"][name]["sha256"][7:]
    return appliance.home / "store/blobs/sha256" / digest[:2] / digest


def test_a_corrupted_stored_adapter_is_refused_on_reload_and_never_served(appliance, served):
    model = _served_model(appliance)
    blob = _store_blob(appliance, model["id"], "adapter_model.safetensors")
    original = blob.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(flipped))
    refused_before = len(audit(appliance, "alias.restore_refused"))
    try:
        os.kill(service_pid(appliance, "engine"), signal.SIGKILL)
        wait_for(lambda: len(audit(appliance, "alias.restore_refused")) > refused_before, 300,
                 "the reconciler to refuse the corrupted adapter", every=1)
        resp = httpx.post(f"{appliance.gateway_url}/v1/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {served.api_key}"},
                          json={"model": ALIAS, "messages": QA[0][:-1], "max_tokens": 8})
        assert resp.status_code == 503, resp.text
        assert resp.headers.get("Retry-After")
        row = audit(appliance, "alias.restore_refused")[-1]
        assert "adapter_model.safetensors" in json.dumps(row)
    finally:
        blob.write_bytes(original)
    # Once the stored bytes are right again, the reconciler restores the alias by itself.
    wait_for(lambda: answers_trained(served), 120, "the alias to come back after the repair", every=1)


def test_sigterm_while_the_engine_starts_stops_everything_and_leaves_nothing(tmp_path, tiny_models_dir):
    home = tmp_path / "home"
    env = dict(os.environ, AIRLOCK_HOME=str(home), AIRLOCK_MODELS_DIR=str(tiny_models_dir),
               AIRLOCK_GATEWAY_PORT=str(free_port()))
    up = subprocess.Popen([AIRLOCK, "up"], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    status_file = home / "run" / "status.json"
    try:
        def engine_starting() -> dict | None:
            try:
                state = json.loads(status_file.read_text())
            except (OSError, ValueError):
                return None
            engine = state["services"]["engine"]
            return state if engine["pid"] and engine["state"] == "starting" else None

        state = wait_for(engine_starting, 60, "the engine to be starting")
        # A second appliance on the same home is refused, naming the first.
        second = subprocess.run([AIRLOCK, "up"], env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 7 and f"pid {up.pid}" in second.stderr
        time.sleep(3)  # vLLM is importing and spawning its engine core now
        assert json.loads(status_file.read_text())["services"]["engine"]["state"] == "starting"
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=90)
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 0, out
    groups = {s["pid"] for s in state["services"].values()}
    leftovers = [p for p in _all_pids() if _pgid(p) in groups]
    assert leftovers == [], leftovers
    run = home / "run"
    assert not (run / "engine" / "vllm.sock").exists() and not (run / "engine" / "secret").exists()
    assert not status_file.exists()
    down = subprocess.run([AIRLOCK, "down"], env=env, capture_output=True, text=True, timeout=60)
    assert "no appliance is running" in down.stdout


def test_a_stale_lock_file_never_makes_down_signal_a_stranger(tmp_path):
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        run = tmp_path / "home" / "run"
        run.mkdir(parents=True)
        (run / "appliance.lock").write_text(f"{stranger.pid}\n")  # names a live process, unlocked
        env = dict(os.environ, AIRLOCK_HOME=str(tmp_path / "home"))
        down = subprocess.run([AIRLOCK, "down"], env=env, capture_output=True, text=True, timeout=60)
        assert down.returncode == 0 and "no appliance is running" in down.stdout
        status_cmd = subprocess.run([AIRLOCK, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert status_cmd.returncode == 7 and "no appliance is running" in status_cmd.stderr
        assert stranger.poll() is None
    finally:
        stranger.kill()


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
