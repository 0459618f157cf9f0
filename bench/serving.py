"""One serving stack for the gateway-overhead and hand-off benchmarks: a throw-away appliance
home, one locked vLLM, the gateway service in its own process, and an `inference` API key.

vLLM listens on TCP here (`engine_transport="tcp"`, still behind its per-start secret), because
wrk, the load generator, cannot open a Unix socket and the overhead benchmark sends the same
requests straight to vLLM as its baseline. Production uses the engine's Unix socket; the capacity
benchmark measures the gateway on that path.

Starting vLLM on a CPU takes the better part of a minute, so both benchmarks share it, and work
that does not need vLLM yet (training the hand-off's candidates) runs while it boots.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from airlock.access.keys import create_key
from airlock.config import REPO_ROOT, Settings
from airlock.context import Airlock
from airlock.serve.engine import read_secret
from airlock.serve.vllm_server import VllmServer
from bench.procs import GatewayProcess, free_port

BASE_MODEL = "airlock-tiny"
# Generous per-key limits: the gateway checks and charges them on every request, never refuses.
KEY_RPM, KEY_TPM = 100_000_000, 1_000_000_000


@dataclass
class Stack:
    airlock: Airlock
    vllm: VllmServer
    gateway: GatewayProcess
    key: str
    # What the boot-time hook returned (the hand-off's candidate model ids).
    prepared: object = None
    boot_seconds: float = 0.0

    @property
    def settings(self) -> Settings:
        return self.airlock.settings

    @property
    def engine_url(self) -> str:
        return self.settings.vllm_url

    @property
    def headers(self) -> dict[str, str]:
        """What an application sends to the gateway: its airlock key."""
        return {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}

    @property
    def engine_headers(self) -> dict[str, str]:
        """What airlock's own processes send to the engine: its per-start secret."""
        return {"Authorization": f"Bearer {read_secret(self.settings)}", "Content-Type": "application/json"}


def bench_settings(home: Path) -> Settings:
    # Explicit values win over any AIRLOCK_* in the caller's environment: the benchmark must
    # never touch the operator's own appliance.
    return Settings(home=home, models_dir=REPO_ROOT / "offline_models", serve_base_model=BASE_MODEL,
                    engine_transport="tcp", vllm_port=free_port(), gateway_port=free_port(), store_backend="local")


@contextmanager
def serving_stack(while_booting: Callable[[Airlock], object] | None = None) -> Iterator[Stack]:
    scratch = Path(tempfile.mkdtemp(prefix="airlock-bench-"))
    settings = bench_settings(scratch / "home")
    settings.ensure_dirs()
    airlock = Airlock.open(settings)
    vllm = VllmServer(settings)
    gateway = GatewayProcess(settings)
    try:
        started = time.perf_counter()
        vllm.start()
        prepared = while_booting(airlock) if while_booting else None
        vllm.wait_ready()
        boot = time.perf_counter() - started
        _, key = create_key(airlock.meta, "bench", role="inference", rpm=KEY_RPM, tpm=KEY_TPM, actor="bench")
        gateway.start()
        yield Stack(airlock=airlock, vllm=vllm, gateway=gateway, key=key, prepared=prepared, boot_seconds=boot)
    finally:
        gateway.stop()
        vllm.stop()
        shutil.rmtree(scratch, ignore_errors=True)
