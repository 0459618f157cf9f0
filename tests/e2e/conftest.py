"""A real appliance (`airlock up`: gateway, worker, vLLM) in a subprocess, shared by the e2e tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest
from e2e_support import AIRLOCK, REPO_ROOT, RunningAppliance
from vllm_fixtures import free_port


@pytest.fixture(scope="session")
def appliance(tmp_path_factory, tiny_models_dir) -> RunningAppliance:
    home = tmp_path_factory.mktemp("appliance") / "home"
    env = dict(os.environ, AIRLOCK_HOME=str(home), AIRLOCK_GATEWAY_PORT=str(free_port()),
               AIRLOCK_VLLM_PORT=str(free_port()), AIRLOCK_MODELS_DIR=str(tiny_models_dir))
    gateway_url = f"http://127.0.0.1:{env['AIRLOCK_GATEWAY_PORT']}"
    home.mkdir(parents=True)
    log = open(home.parent / "up.log", "wb")
    proc = subprocess.Popen([AIRLOCK, "up"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"airlock up exited {proc.returncode}:\n{(home.parent / 'up.log').read_text()[-4000:]}")
        try:
            if httpx.get(f"{gateway_url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    else:
        proc.kill()
        raise AssertionError("the appliance did not become ready in 600 s")
    yield RunningAppliance(env=env, home=home, gateway_url=gateway_url, proc=proc)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
