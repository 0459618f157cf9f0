"""Start, supervise and stop the real vLLM OpenAI server; hot-load and unload LoRA adapters.

vLLM runs as a child process in its own process group: its engine spawns worker processes,
and signalling the whole group is the only way to be sure none of them outlives a stop.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import httpx

from airlock.config import Settings
from airlock.errors import IntegrityFailure, InvalidInput, NotFound, NotReady

# A loopback connect either succeeds or is refused at once; a long wait means vLLM is wedged.
_CONNECT_TIMEOUT_S = 1.0
# Loading an adapter reads its weights and warms the engine; on a busy CPU that takes seconds.
_ADAPTER_TIMEOUT_S = 120.0


@functools.cache
def has_nvidia_gpu() -> bool:
    """True when an NVIDIA GPU is visible; asks nvidia-smi so torch need not be imported."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


class VllmServer:
    """One vLLM OpenAI server bound to loopback, serving a base model with runtime LoRA loading.

    The adapter methods only need the URL, so a process that did not start vLLM (the CLI, the
    worker) can build a `VllmServer(settings)` and load adapters into the running one.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        model_dir: Path | None = None,
        served_name: str | None = None,
        port: int | None = None,
        log_path: Path | None = None,
        gpu: bool | None = None,
    ) -> None:
        self.settings = settings
        self.served_name = served_name or settings.serve_base_model
        self.model_dir = Path(model_dir or settings.models_dir / self.served_name)
        self.host = settings.vllm_host
        self.port = port or settings.vllm_port
        self.log_path = Path(log_path or settings.run_dir / f"vllm-{self.port}.log")
        self._gpu = gpu
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def gpu(self) -> bool:
        if self._gpu is None:
            self._gpu = has_nvidia_gpu()
        return self._gpu

    def command(self) -> list[str]:
        s = self.settings
        extra = shlex.split(s.vllm_extra_args)
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--max-model-len", str(s.vllm_max_model_len),
            "--enable-lora",
            "--max-lora-rank", str(s.vllm_max_lora_rank),
            "--max-loras", str(s.vllm_max_loras),
        ]
        # The CPU build has no fast half-precision kernels for every op; on a GPU vLLM's own
        # choice (the checkpoint's dtype) is right. An explicit --dtype in the extra args wins.
        if not self.gpu and not any(a == "--dtype" or a.startswith("--dtype=") for a in extra):
            cmd += ["--dtype", "float32"]
        return cmd + extra

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        if not self.gpu:
            # The CPU build reserves KV cache up front; 1 GiB is plenty for small models and
            # leaves memory for training beside it. An operator's own value is kept.
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        return env

    @property
    def pid_path(self) -> Path:
        return self.settings.run_dir / f"vllm-{self.port}.pid"

    def start(self) -> None:
        """Launch vLLM in the background; call `wait_ready` to know when it answers."""
        if self.is_running():
            return
        if not (self.model_dir / "config.json").is_file():
            raise NotFound(f"base model folder {self.model_dir} has no config.json")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
            )
        self.pid_path.write_text(f"{self.proc.pid}\n")

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def is_healthy(self, timeout: float = 2.0) -> bool:
        try:
            return http().get(f"{self.url}/health", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(deque(f, maxlen=lines))
        except OSError:
            return ""

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until GET /health answers 200; fail fast if the process exits meanwhile."""
        timeout = self.settings.vllm_startup_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise NotReady(
                    f"vLLM exited with code {self.proc.returncode} before it was ready "
                    f"(log: {self.log_path}); last lines:\n{self.log_tail()}"
                )
            if self.is_healthy(timeout=_CONNECT_TIMEOUT_S):
                return
            if time.monotonic() > deadline:
                raise NotReady(
                    f"vLLM did not answer {self.url}/health within {timeout:.0f} s "
                    f"(log: {self.log_path}); last lines:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left after `grace` s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
            # Engine workers may outlive the API process that led the group.
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            self.pid_path.unlink(missing_ok=True)

    def __enter__(self) -> "VllmServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- runtime LoRA adapters ---------------------------------------------------------------

    def load_adapter(self, lora_name: str, path: Path | str) -> None:
        """Load the PEFT adapter folder `path` into vLLM, addressable as model `lora_name`."""
        body = {"lora_name": lora_name, "lora_path": str(Path(path).absolute())}
        resp = self._post("/v1/load_lora_adapter", body, f"load adapter {lora_name!r}")
        if resp.status_code == 200:
            return
        reason = _vllm_message(resp)
        if resp.status_code < 500:
            raise InvalidInput(f"vLLM refused adapter {lora_name!r} from {path}: {reason}")
        raise IntegrityFailure(f"vLLM could not load adapter {lora_name!r} from {path}: {reason}")

    def unload_adapter(self, lora_name: str) -> None:
        resp = self._post("/v1/unload_lora_adapter", {"lora_name": lora_name},
                          f"unload adapter {lora_name!r}")
        if resp.status_code == 200:
            return
        reason = _vllm_message(resp)
        if resp.status_code == 404:
            raise NotFound(f"vLLM has no adapter named {lora_name!r} loaded: {reason}")
        raise InvalidInput(f"vLLM refused to unload adapter {lora_name!r}: {reason}")

    def loaded_adapters(self) -> list[str]:
        """Names of the adapters vLLM serves now (its model list minus the base model)."""
        try:
            resp = http().get(f"{self.url}/v1/models", timeout=_timeout(10.0))
        except httpx.HTTPError as exc:
            raise NotReady(f"vLLM is not reachable at {self.url}: {exc}") from exc
        return [m["id"] for m in resp.json().get("data", []) if m.get("parent")]

    def _post(self, path: str, body: dict, what: str) -> httpx.Response:
        try:
            return http().post(f"{self.url}{path}", json=body, timeout=_timeout(_ADAPTER_TIMEOUT_S))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise NotReady(f"cannot {what}: vLLM is not reachable at {self.url} ({exc})") from exc
        except httpx.HTTPError as exc:
            raise NotReady(f"cannot {what}: vLLM at {self.url} did not answer ({exc})") from exc


@functools.cache
def http() -> httpx.Client:
    """One client per process for the calls to vLLM: building an httpx client loads the CA
    bundle (tens of milliseconds), which a hand-off of four calls should not pay four times."""
    return httpx.Client(trust_env=False)


def _timeout(total: float) -> httpx.Timeout:
    return httpx.Timeout(total, connect=_CONNECT_TIMEOUT_S)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _vllm_message(resp: httpx.Response) -> str:
    """vLLM's own error text: {"error": {"message": ...}} or a bare string."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text.strip() or f"HTTP {resp.status_code}"
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(data.get("detail"), str):
            return data["detail"]
    return str(data)
