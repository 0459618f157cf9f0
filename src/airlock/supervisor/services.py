"""The three services as child processes: how each starts, how each is stopped, how each ended.

Each runs `python -m airlock <service>`, the same command a systemd unit or a container runs,
in its own process group (vLLM's engine forks workers; a group signal reaches all of them) and
with a parent-death signal, so not even a `kill -9` of the supervisor leaves one behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from airlock.children import describe_exit, die_with_parent
from airlock.private import make_private_dir, open_private
from airlock.serve.vllm_server import stop_group
from airlock.store import without_store_credentials

# The order they start in; they stop in the reverse order (the gateway first stops taking traffic).
NAMES = ("engine", "worker", "gateway")
# The services that open the artifact store, and so get its credentials (AIRLOCK_S3_*).
USES_STORE = frozenset({"worker", "gateway"})
STOP_GRACE_S = {"gateway": 10.0, "worker": 15.0, "engine": 20.0}
# A service that stayed up this long had a healthy run: its next crash starts the backoff anew.
STABLE_AFTER_S = 60.0


@dataclass
class Service:
    name: str  # "engine", "worker", "gateway", or "engine:REPLICA" for an engine's other replicas
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    state: str = "stopped"  # starting | running | ready | backoff | stopped
    restarts: int = 0
    last_exit: str | None = None
    started_at: float = 0.0
    next_start: float = 0.0
    backoff: float = 1.0

    @property
    def kind(self) -> str:
        """The service it is: its `python -m airlock` command."""
        return self.name.split(":", 1)[0]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        make_private_dir(self.log_path.parent)
        env = self.environment()
        with os.fdopen(open_private(self.log_path), "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "airlock", self.kind], env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=die_with_parent)
        self.state, self.started_at = "starting", time.monotonic()

    def environment(self) -> dict[str, str]:
        """What the child starts with: the supervisor's environment, less the S3 store's keys for a
        service that never opens the store (the engine)."""
        env = dict(os.environ, **self.env)
        return env if self.kind in USES_STORE else without_store_credentials(env)

    def exited(self) -> int | None:
        """The exit code once the process ended (and was reaped), else None."""
        return self.proc.poll() if self.proc else None

    def schedule_restart(self, returncode: int, backoff_max: float) -> None:
        # The leader died, perhaps by SIGKILL; whatever it forked (vLLM's engine core) must go too.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if time.monotonic() - self.started_at > STABLE_AFTER_S:
            self.backoff = 1.0
        self.last_exit = describe_exit(returncode)
        self.proc, self.state = None, "backoff"
        self.next_start = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, backoff_max)
        self.restarts += 1

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, STOP_GRACE_S[self.kind])
            self.last_exit = describe_exit(self.proc.returncode)
        self.proc, self.state = None, "stopped"

    def describe(self) -> dict:
        return {"state": self.state, "pid": self.pid, "restarts": self.restarts,
                "last_exit": self.last_exit, "log": str(self.log_path)}
