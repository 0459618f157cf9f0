"""One serving stack for the gateway and hand-off benchmarks: a throw-away appliance home, one
vLLM on a free port, the gateway in its own process, and an API key.

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

from airlock.config import REPO_ROOT, Settings
from airlock.context import Airlock
from airlock.access.keys import create_key
from airlock.serve.vllm_server import VllmServer
from bench.procs import GatewayProcess, free_port

BASE_MODEL = "airlock-tiny"


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
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}", "content-type": "application/json"}


def bench_settings(home: Path) -> Settings:
    # Explicit values win over any AIRLOCK_* in the caller's environment: the benchmark must
    # never touch the operator's own appliance.
    return Settings(home=home, models_dir=REPO_ROOT / "offline_models", serve_base_model=BASE_MODEL,
                    vllm_port=free_port(), gateway_port=free_port(), store_backend="local")


@contextmanager
def serving_stack(while_booting: Callable[[Airlock], object] | None = None) -> Iterator[Stack]:
    scratch = Path(tempfile.mkdtemp(prefix="airlock-bench-"))
    settings = bench_settings(scratch / "home")
    airlock = Airlock.open(settings)
    vllm = VllmServer(settings)
    gateway = GatewayProcess(settings)
    try:
        started = time.perf_counter()
        vllm.start()
        prepared = while_booting(airlock) if while_booting else None
        vllm.wait_ready()
        boot = time.perf_counter() - started
        gateway.start()
        _, key = create_key(airlock.meta, "bench")
        yield Stack(airlock=airlock, vllm=vllm, gateway=gateway, key=key, prepared=prepared, boot_seconds=boot)
    finally:
        gateway.stop()
        vllm.stop()
        shutil.rmtree(scratch, ignore_errors=True)
