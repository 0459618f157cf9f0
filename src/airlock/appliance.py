"""One appliance on one host: the gateway, the worker and a supervised vLLM, started together.

`airlock up` runs this in the foreground; Ctrl-C or `airlock down` (SIGTERM to the pid in the
pid file) stops all three cleanly. After vLLM is ready, every alias is verified and loaded
again, so a restarted appliance serves exactly what it served before.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import uvicorn

from airlock.config import Settings
from airlock.context import Airlock
from airlock.errors import AirlockError, NotReady
from airlock.serve.vllm_server import VllmServer
from airlock.workflow.worker import Worker

log = logging.getLogger("airlock.appliance")


def pid_file(settings: Settings):
    return settings.run_dir / "airlock.pid"


def running_pid(settings: Settings) -> int | None:
    """The pid of a live `airlock up` on this home, or None."""
    try:
        pid = int(pid_file(settings).read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


class Appliance:
    def __init__(self, settings: Settings, on_status=print) -> None:
        self.airlock = Airlock.open(settings)
        self.settings = settings
        self.say = on_status
        self.vllm = VllmServer(settings)
        self.worker = Worker(self.airlock)
        self.gateway: uvicorn.Server | None = None
        self.stopped = threading.Event()

    def start(self) -> None:
        if (pid := running_pid(self.settings)) is not None:
            raise NotReady(f"an appliance already runs on {self.settings.home} (pid {pid}); `airlock down` stops it")
        pid_file(self.settings).write_text(str(os.getpid()))
        from airlock.gateway.app import create_app
        from airlock.trust.keys import ensure_appliance_key

        ensure_appliance_key(self.settings)  # created at first start, owner-only

        self.say(f"starting vLLM ({self.settings.serve_base_model}) on {self.vllm.url}")
        self.vllm.start()
        self.worker.start_thread()
        config = uvicorn.Config(create_app(self.settings), host=self.settings.gateway_host,
                                port=self.settings.gateway_port, log_level="warning", lifespan="on")
        self.gateway = uvicorn.Server(config)
        threading.Thread(target=self.gateway.run, name="airlock-gateway", daemon=True).start()
        self._wait_gateway()
        self.say(f"gateway on {self.settings.gateway_url} (OpenAI API at {self.settings.gateway_url}/v1)")

    def _wait_gateway(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.gateway and self.gateway.started):
            if time.monotonic() > deadline:
                raise NotReady(f"the gateway did not start on {self.settings.gateway_url}")
            time.sleep(0.05)

    def wait_vllm(self) -> None:
        self.vllm.wait_ready(self.settings.vllm_startup_timeout_s)
        self.say("vLLM is ready")
        self.restore_aliases()

    def restore_aliases(self) -> None:
        from airlock.serve.deploy import deploy, list_aliases

        for alias in list_aliases(self.airlock):
            try:
                deploy(self.airlock, alias["model_id"], alias["name"], actor="appliance")
                self.say(f"alias {alias['name']} -> {alias['model_id']} restored")
            except AirlockError as exc:
                self.say(f"alias {alias['name']} NOT restored: {exc}")

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        self.say("stopping")
        self.worker.stop_event.set()
        if self.gateway:
            self.gateway.should_exit = True
        self.vllm.stop()
        pid_file(self.settings).unlink(missing_ok=True)

    def serve_forever(self) -> None:
        """Block until SIGINT/SIGTERM (or vLLM dies), then stop everything."""
        stop_requested = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop_requested.set())
        try:
            while not stop_requested.wait(0.5):
                if not self.vllm.is_running():
                    self.say(f"vLLM exited; its log: {self.vllm.log_path}")
                    break
        finally:
            self.stop()


def stop_running(settings: Settings, timeout: float = 60.0) -> int | None:
    """Ask a running appliance to stop and wait for it; returns its pid, or None if none ran."""
    pid = running_pid(settings)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running_pid(settings) == pid and time.monotonic() < deadline:
        time.sleep(0.2)
    if running_pid(settings) == pid:
        raise NotReady(f"appliance pid {pid} did not stop within {timeout:.0f} s")
    return pid
