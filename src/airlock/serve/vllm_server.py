"""Start, supervise and stop the real vLLM OpenAI server, locked to airlock's own processes.

vLLM listens on a Unix socket in the engine directory (mode 0700: other users cannot even reach
the socket) and wants a secret that is made anew at each start and handed over in the
environment (never on the command line, which any local user can read in /proc). vLLM runs in
its own process group: its engine spawns worker processes, and signalling the whole group is
the only way to be sure none of them outlives a stop.
"""

from __future__ import annotations

import functools
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from airlock.config import Settings
from airlock.errors import ConfigurationError, NotReady
from airlock.models.tool_calls import tool_call_parser
from airlock.private import make_private_dir, open_private
from airlock.serve.engine import CONNECT_TIMEOUT_S, EngineClient, engine_client
from airlock.serve.null_adapter import engine_weights_name, write_null_adapter
from airlock.store import without_store_credentials


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


def prepare_engine_dir(settings: Settings) -> str:
    """A private engine directory with no stale socket, and a new secret in it; returns it."""
    engine_dir = settings.engine_dir
    make_private_dir(engine_dir)
    engine_dir.chmod(0o700)  # a shared volume (AIRLOCK_ENGINE_HOME) made by others is narrowed too
    settings.engine_socket.unlink(missing_ok=True)  # vLLM cannot bind over a stale one
    secret = secrets.token_urlsafe(32)
    tmp = settings.engine_secret_path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    tmp.replace(settings.engine_secret_path)
    return secret


def clear_engine_dir(settings: Settings) -> None:
    """What an engine leaves behind: its socket and its secret, removed once it stopped."""
    settings.engine_socket.unlink(missing_ok=True)
    settings.engine_secret_path.unlink(missing_ok=True)


def served_model_missing(settings: Settings, folder: Path) -> ConfigurationError:
    """The engine cannot serve a base model whose folder is not there: a setting to fix, not a crash
    to retry. Names the setting and every folder the model was looked up in."""
    where = ", ".join(str(d) for d in settings.models_dirs)
    return ConfigurationError(
        f"AIRLOCK_SERVE_BASE_MODEL={settings.serve_base_model}: the base model folder {folder} has no "
        f"config.json (models are looked up in {where}; AIRLOCK_MODELS_DIR names another folder, "
        "`airlock models install BUNDLE` adds models to an installed release)")


class VllmServer:
    """One vLLM OpenAI server serving a base model with runtime LoRA loading, behind a secret.

    `exec_engine` replaces the calling process with vLLM (`airlock engine`, one service per
    process); `start` runs it as a child (tests, benchmarks).
    """

    def __init__(self, settings: Settings, *, model_dir: Path | None = None, served_name: str | None = None,
                 log_path: Path | None = None, gpu: bool | None = None) -> None:
        self.settings = settings
        self.served_name = served_name or settings.serve_base_model
        self.model_dir = Path(model_dir or settings.model_path(self.served_name))
        self.log_path = Path(log_path or settings.run_dir / "engine.log")
        self._gpu = gpu
        self.proc: subprocess.Popen | None = None

    @property
    def gpu(self) -> bool:
        if self._gpu is None:
            self._gpu = has_nvidia_gpu()
        return self._gpu

    @property
    def client(self) -> EngineClient:
        return engine_client(self.settings)

    @property
    def null_adapter_dir(self) -> Path:
        return self.settings.engine_dir / "base-as-adapter"

    def command(self) -> list[str]:
        s = self.settings
        extra = shlex.split(s.vllm_extra_args)
        where = (["--uds", str(s.engine_socket)] if s.engine_transport == "uds"
                 else ["--host", s.vllm_host, "--port", str(s.vllm_port)])
        # On the CPU the base model's name is a zero adapter (serve/null_adapter.py says why):
        # base-model requests batched beside adapter requests otherwise get an adapter's weights.
        served = (["--served-model-name", self.served_name] if self.gpu else
                  ["--served-model-name", engine_weights_name(self.served_name),
                   "--lora-modules", f"{self.served_name}={self.null_adapter_dir}"])
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            *served,
            *where,
            "--max-model-len", str(s.vllm_max_model_len),
            "--enable-lora",
            "--max-lora-rank", str(s.vllm_max_lora_rank),
            "--max-loras", str(s.vllm_max_loras),
        ]
        # The CPU build has no fast half-precision kernels for every op; on a GPU vLLM's own
        # choice (the checkpoint's dtype) is right. An explicit --dtype in the extra args wins.
        if not self.gpu and not any(a == "--dtype" or a.startswith("--dtype=") for a in extra):
            cmd += ["--dtype", "float32"]
        if self.gpu and not any(a.startswith("--gpu-memory-utilization") for a in extra):
            cmd += ["--gpu-memory-utilization", str(s.vllm_gpu_memory_utilization)]
        if s.engine_tensor_parallel_size > 1:  # one engine over several GPUs of this host
            cmd += ["--tensor-parallel-size", str(s.engine_tensor_parallel_size)]
        if s.engine_sleep_for_training:
            cmd.append("--enable-sleep-mode")
        # Without a parser vLLM refuses requests with tools unless their tool_choice is "none".
        # A parser named in the extra args wins.
        parser = tool_call_parser(self.model_dir, s.tool_call_parser)
        if parser and not any(a.startswith("--tool-call-parser") for a in extra):
            cmd += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
        return cmd + extra

    def environment(self, secret: str) -> dict[str, str]:
        # vLLM never opens the artifact store (the gateway hands it verified copies): it gets none
        # of the store's keys, whatever the environment it was started from holds.
        env = without_store_credentials(dict(os.environ))
        env["VLLM_API_KEY"] = secret
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        # Idle connections stay open longer than the gateway keeps them pooled, so the gateway
        # is always the side that closes one, never a request's race with the engine's close.
        env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] = str(self.settings.engine_keep_alive_s)
        # Nothing may even try to leave the host (the offline-bundle test traces every connect()):
        # without VLLM_HOST_IP, vLLM finds its own address by connecting a UDP socket to a public
        # resolver; usage statistics and the model hub stay off. An operator's own values are kept.
        for name, value in (("VLLM_HOST_IP", "127.0.0.1"), ("VLLM_NO_USAGE_STATS", "1"), ("DO_NOT_TRACK", "1"),
                            ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")):
            env.setdefault(name, value)
        if self.settings.engine_sleep_for_training:
            env["VLLM_SERVER_DEV_MODE"] = "1"  # /sleep and /wake_up; the engine's door is airlock's alone
        if not self.gpu:
            # The CPU build reserves KV cache up front; 1 GiB is plenty for small models and
            # leaves memory for training beside it. An operator's own value is kept.
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            # vLLM keeps one core out of its compute threads (VLLM_CPU_NUM_OF_RESERVED_CPU, which
            # an operator may set). It stays so even on 2 CPUs: with the engine's threads on both,
            # batches ran faster (100 greedy answers of the shipped model: 27.3 s against 40.2 s)
            # but a fine-tune beside serving slowed answers 2.2x (benchmark 5, target 1.5x), since
            # a parallel region waits for its thread on the core the worker holds.
        return env

    def _check_model(self) -> None:
        if not (self.model_dir / "config.json").is_file():
            raise served_model_missing(self.settings, self.model_dir)

    def _prepare(self) -> dict[str, str]:
        """The engine directory made ready for a start (and the zero adapter written into it on
        the CPU); returns the engine's environment."""
        self._check_model()
        if not self.gpu:  # first: a base model it cannot be built for is refused with nothing changed
            write_null_adapter(self.model_dir, self.null_adapter_dir)
        return self.environment(prepare_engine_dir(self.settings))

    def exec_engine(self) -> None:
        """Become vLLM: this process is then the engine service itself (no wrapper in between)."""
        env = self._prepare()
        cmd = self.command()
        os.execve(cmd[0], cmd, env)

    def start(self) -> None:
        """Launch vLLM as a child in the background; `wait_ready` tells when it answers."""
        if self.is_running():
            return
        env = self._prepare()
        make_private_dir(self.log_path.parent)
        with os.fdopen(open_private(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def is_healthy(self, timeout: float = 2.0) -> bool:
        return self.client.is_healthy(timeout)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

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
            if self.client.is_healthy(timeout=CONNECT_TIMEOUT_S):
                return
            if time.monotonic() > deadline:
                raise NotReady(
                    f"vLLM did not become healthy within {timeout:.0f} s "
                    f"(log: {self.log_path}); last lines:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left after `grace` s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            stop_group(proc, grace)
        finally:
            clear_engine_dir(self.settings)

    def __enter__(self) -> "VllmServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Adapter calls go through the locked client; kept here so a test holding the server can
    # load adapters into it directly.
    def load_adapter(self, lora_name: str, path: Path | str) -> None:
        self.client.load_adapter(lora_name, path)

    def unload_adapter(self, lora_name: str) -> None:
        self.client.unload_adapter(lora_name)

    def loaded_adapters(self) -> list[str]:
        return self.client.loaded_adapters()


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM a child's process group, wait up to `grace` s, then SIGKILL what is left of it."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # Engine workers may outlive the API process that led the group.
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError:
        return ""


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
