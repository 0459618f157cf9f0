"""Starting and stopping the processes the serving benchmarks need: vLLM and a gateway.

The gateway runs in its own process (uvicorn, configured as `airlock up` configures it) so the
load generator's CPU time is never counted inside the gateway. Every child gets its own process
group: stopping the group is the only way to be sure no worker process outlives the benchmark.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from airlock.config import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None, timeout: float, log: Path | None = None) -> None:
    """Poll `url` until it answers 200; fail at once if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with code {proc.returncode} before {url} answered\n{tail}")
        try:
            if httpx.get(url, timeout=1.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.2)


def gateway_env(settings: Settings) -> dict[str, str]:
    """The environment that makes `get_settings()` in a child equal to `settings` here."""
    return dict(
        os.environ,
        AIRLOCK_HOME=str(settings.home),
        AIRLOCK_MODELS_DIR=str(settings.models_dir),
        AIRLOCK_SERVE_BASE_MODEL=settings.serve_base_model,
        AIRLOCK_VLLM_HOST=settings.vllm_host,
        AIRLOCK_VLLM_PORT=str(settings.vllm_port),
        AIRLOCK_GATEWAY_HOST=settings.gateway_host,
        AIRLOCK_GATEWAY_PORT=str(settings.gateway_port),
    )


class GatewayProcess:
    """`create_app(settings)` under uvicorn in a child process.

    uvicorn's defaults (uvloop and httptools when installed) and log level `warning` are what
    `airlock up` uses, so the figures are those of the shipped gateway.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log_path = settings.run_dir / "bench-gateway.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.settings.gateway_url

    def start(self, timeout: float = 60.0) -> None:
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "airlock.gateway.app:create_app",
               "--host", self.settings.gateway_host, "--port", str(self.settings.gateway_port),
               "--log-level", "warning"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=gateway_env(self.settings), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.url}/healthz", self.proc, timeout, self.log_path)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc)


def stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the child's process group, SIGKILL whatever is left after `grace` seconds."""
    def signal_group(sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    if proc.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    signal_group(signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
