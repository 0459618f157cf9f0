"""Starting and stopping the processes the serving benchmarks need, and reading their CPU time.

The gateway runs in its own process (`python -m airlock gateway`, as `airlock up` runs it) so the
load generator's CPU time is never counted inside the gateway. Every child gets its own process
group: stopping the group is the only way to be sure no worker process outlives the benchmark.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from airlock.config import Settings
from airlock.tls import local_gateway


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None, timeout: float, log: Path | None = None, *,
              verify: ssl.SSLContext | bool = True, extensions: dict | None = None) -> None:
    """Poll `url` until it answers 200; fail at once if `proc` exits first. Over https, `verify`
    and `extensions` are how the certificate is checked (see airlock.tls.local_gateway)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with code {proc.returncode} before {url} answered\n{tail}")
        try:
            with httpx.Client(verify=verify, trust_env=False) as client:
                if client.get(url, timeout=1.0, extensions=extensions).status_code == 200:
                    return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.2)


# The settings a benchmark sets for its children; everything else keeps its default.
_CHILD_FIELDS = ("home", "models_dir", "serve_base_model", "engine_transport", "engine_home", "vllm_host",
                 "vllm_port", "gateway_host", "gateway_port", "store_backend", "worker_threads", "worker_nice",
                 "tls_cert", "tls_key", "engines", "vllm_max_lora_rank", "vllm_max_loras")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes `get_settings()` in a child equal to `settings` here. Any
    AIRLOCK_* of the caller is dropped: a benchmark never touches the operator's own appliance."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")}
    for name in _CHILD_FIELDS:
        value = getattr(settings, name)
        if value is not None:
            env[f"AIRLOCK_{name.upper()}"] = str(value)
    return env


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far, all its threads (from /proc; zeros where none)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads."""
    return sum(cpu_times(pid))


def _stat_fields(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return []


def family(pid: int) -> list[int]:
    """`pid` and every process below it (the worker and its training jobs), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))):
            parents[int(entry)] = int(fields[1])
    out, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        out += frontier
    return out


def signal_family(pid: int, sig: int) -> None:
    """Pause or resume a process with everything it started (SIGSTOP/SIGCONT)."""
    for member in family(pid):
        try:
            os.kill(member, sig)
        except ProcessLookupError:
            pass


def family_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process, its live descendants, and the children it has already reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = _stat_fields(pid)
    reaped = (int(fields[13]) + int(fields[14])) / tick if fields else 0.0
    return reaped + sum(cpu_seconds(member) for member in family(pid))


def parse_metrics(text: str) -> dict[str, dict[tuple[str, ...], float]]:
    """The gateway's request counts by (route, status), upstream errors by (kind,), and the time
    spent waiting on the engines ("upstream": {("sum",): seconds, ("count",): requests}), from
    /metrics (prometheus_client's parser; every engine's figures added up)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple[str, ...], float]] = {"requests": {}, "upstream_errors": {}, "upstream": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "airlock_gateway_requests_total":
                where = (sample.labels.get("route", ""), sample.labels.get("status", ""))
                out["requests"][where] = out["requests"].get(where, 0) + int(sample.value)
            elif sample.name == "airlock_gateway_upstream_errors_total":
                kind = (sample.labels.get("kind", ""),)
                out["upstream_errors"][kind] = out["upstream_errors"].get(kind, 0) + int(sample.value)
            elif sample.name in ("airlock_gateway_upstream_seconds_sum", "airlock_gateway_upstream_seconds_count"):
                part = (sample.name.rsplit("_", 1)[1],)
                out["upstream"][part] = out["upstream"].get(part, 0.0) + sample.value
    return out


# The gateway's /metrics wants a key with the `metrics` permission: one per gateway started here.
_METRICS_KEYS: dict[str, str] = {}


def allow_metrics(settings: Settings) -> None:
    """Make the key the benchmark reads the gateway's /metrics with (an admin's: it has `metrics`)."""
    from airlock.access.keys import create_key
    from airlock.meta import open_meta

    _, key = create_key(open_meta(settings.db_path), "bench-metrics", role="admin", actor="bench")
    _METRICS_KEYS[settings.gateway_url] = key


def metrics_headers(url: str) -> dict[str, str]:
    key = _METRICS_KEYS.get(url)
    return {"Authorization": f"Bearer {key}"} if key else {}


def upstream_wait(url: str) -> tuple[float, float]:
    """(seconds the gateway has spent waiting on the engine for response headers, requests), so far."""
    up = parse_metrics(httpx.get(f"{url}/metrics", timeout=5, trust_env=False,
                                 headers=metrics_headers(url)).text)["upstream"]
    return up.get(("sum",), 0.0), up.get(("count",), 0.0)


def gateway_trouble(url: str, route: str = "/v1/chat/completions", *, verify: ssl.SSLContext | bool = True,
                    extensions: dict | None = None) -> str:
    """What the gateway's /metrics says went wrong on `route` (answers other than 2xx) and with
    the engine (upstream errors), or ""."""
    try:
        with httpx.Client(verify=verify, trust_env=False) as client:
            counts = parse_metrics(client.get(f"{url}/metrics", timeout=5, extensions=extensions,
                                              headers=metrics_headers(url)).text)
    except httpx.HTTPError as exc:
        return f"(its /metrics did not answer: {type(exc).__name__})"
    bad = [f"{where} HTTP {status}: {n}" for (where, status), n in sorted(counts["requests"].items())
           if where == route and not status.startswith("2")]
    bad += [f"upstream {kind}: {n}" for (kind,), n in sorted(counts["upstream_errors"].items())]
    return "; ".join(bad)


def proc_status(pid: int) -> dict[str, int]:
    """A process's nice value and its number of OS threads (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return {"nice": int(fields[16]), "threads": int(fields[17])}


def pinned(cpus: set[int] | None):
    """A preexec_fn that runs the child on `cpus` only (None: anywhere)."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


class GatewayProcess:
    """The gateway service as `airlock up` runs it: `python -m airlock gateway` in a child
    process, configured through AIRLOCK_* variables, optionally pinned to some CPUs.
    """

    def __init__(self, settings: Settings, cpus: set[int] | None = None, name: str = "gateway") -> None:
        self.settings = settings
        self.cpus = cpus
        self.log_path = settings.run_dir / f"bench-{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.settings.gateway_url

    @property
    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc else 0.0

    def start(self, timeout: float = 60.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        allow_metrics(self.settings)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "airlock", "gateway"], env=settings_env(self.settings),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=pinned(self.cpus))
        probe = local_gateway(self.settings)
        wait_http(f"{self.url}/healthz", self.proc, timeout, self.log_path, verify=probe.verify,
                  extensions=probe.extensions)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc)


class ApplianceProcess:
    """`python -m airlock up`: the supervisor and its three services (engine on the private
    socket, worker, gateway), each its own process, exactly as an operator starts them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log_path = settings.home.parent / "bench-up.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.settings.gateway_url

    def start(self, timeout: float | None = None) -> None:
        self.settings.ensure_home()  # private, as airlock up wants it (a 0755 home is refused)
        allow_metrics(self.settings)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "airlock", "up"], env=settings_env(self.settings),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        # /readyz answers 200 once the engine (vLLM) does, through the gateway.
        wait_http(f"{self.url}/readyz", self.proc, timeout or self.settings.vllm_startup_timeout_s + 60, self.log_path)

    def pid(self, service: str) -> int:
        """The pid of one service, from the supervisor's run/status.json."""
        status = json.loads((self.settings.run_dir / "status.json").read_text())
        pid = status["services"][service]["pid"]
        if not pid:
            raise RuntimeError(f"the appliance's {service} has no process: {status['services'][service]}")
        return pid

    def stop(self) -> None:
        # The supervisor stops gateway, worker and engine in turn (their graces add up to 45 s).
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc, grace=90.0)


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
