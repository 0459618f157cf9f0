"""Benchmark 2: the gateway's capacity, in requests per second per CPU core it uses.

The gateway runs as the service does (`python -m airlock gateway`, configured by AIRLOCK_*
variables) with everything a production request meets: an `inference` key checked from memory,
its role, its per-key rate limits (generous, so they are checked and charged but never hit),
request ids and metrics. Its upstream is `bench.stub_engine`, an instant stand-in listening on the
engine's Unix socket and checking the engine secret, so what runs out is the gateway, not vLLM.

The gateway is pinned to one core, wrk and the stub to the other. Its CPU time (utime + stime of
the whole process from /proc, every thread included) over each run gives requests per CPU
second, which is requests per second per core: rps / (cpu seconds / wall seconds). The baseline
is the same process answering GET /healthz (uvicorn, the gateway's front and FastAPI alone; /v1
bypasses FastAPI).
Runs of the three routes alternate, so a change in the machine's load lands on all of them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from airlock.access.keys import create_key
from airlock.config import REPO_ROOT, Settings
from airlock.context import Airlock
from airlock.serve.vllm_server import prepare_engine_dir
from bench import profile
from bench.procs import GatewayProcess, cpu_seconds, cpu_times, free_port, gateway_trouble, pinned, stop_group
from bench.report import Section
from bench.stats import Latency
from bench.wrk import WrkResult, lua_script, run_wrk, wrk_path

TARGET_PER_CORE = 1500
DIRECT = "the stand-in engine, straight (TCP)"
MIN_PROXY = "a minimal Python proxy (bench/min_proxy.py)"
AIOHTTP_PROXY = "the same, its upstream call made with aiohttp"
GATEWAY = "airlock's gateway"
BASE_MODEL = "airlock-tiny"
CONNECTIONS = 16
PACE_MS = 45  # about the one-client request rate of the gateway-overhead benchmark with vLLM
# Generous per-key limits: every request is checked and charged, none is ever refused.
RPM, TPM = 100_000_000, 1_000_000_000
CHAT = {"model": BASE_MODEL, "messages": [{"role": "user", "content": "Say hello to the operator."}],
        "max_tokens": 8, "temperature": 0}


@dataclass
class Route:
    name: str
    what: str
    method: str
    path: str
    body: str | None = None
    runs: list[tuple[WrkResult, float, float]] = field(default_factory=list)  # (wrk, gateway cpu, stub cpu)

    @property
    def requests(self) -> int:
        return sum(r.requests for r, _, _ in self.runs)

    @property
    def wall(self) -> float:
        return sum(r.seconds for r, _, _ in self.runs)

    @property
    def gateway_cpu(self) -> float:
        return sum(c for _, c, _ in self.runs)

    @property
    def per_core(self) -> float:
        """Requests per gateway CPU second: rps / (cpu seconds / wall seconds)."""
        return self.requests / self.gateway_cpu if self.gateway_cpu else 0.0


def routes() -> list[Route]:
    return [
        Route("GET /healthz", "uvicorn, the front (request id, header bound, metrics) and FastAPI", "GET", "/healthz"),
        Route("GET /v1/models", "the front and the OpenAI handler (no FastAPI): the key check, its role and the "
              "registry's freshness check", "GET", "/v1/models"),
        Route("POST /v1/chat/completions", "plus body checks, model resolution, rate limits, the recorder, the "
              "proxy to the engine socket, reshaping the answer and the relay", "POST", "/v1/chat/completions",
              json.dumps(CHAT)),
    ]


def start_stub(settings: Settings, cpus: set[int] | None, port: int | None = None) -> subprocess.Popen:
    """The stand-in engine on the engine's socket (or on a TCP port, for wrk to reach it straight),
    checking the engine secret, as `airlock engine` would."""
    where = ["--port", str(port)] if port else ["--uds", str(settings.engine_socket)]
    log_path = settings.run_dir / f"bench-stub-{port or 'uds'}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen([sys.executable, "-m", "bench.stub_engine", *where,
                             "--secret-file", str(settings.engine_secret_path)], cwd=REPO_ROOT,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=pinned(cpus))
    log.close()
    deadline = time.monotonic() + 30
    while not (settings.engine_socket.exists() if not port else _listening(port)):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the stub engine did not start: " + log_path.read_text(errors="replace")[-2000:])
        time.sleep(0.05)
    return proc


def start_min_proxy(settings: Settings, port: int, cpus: set[int] | None, client: str = "raw") -> subprocess.Popen:
    """bench/min_proxy.py in front of the stand-in engine's socket, on the gateway's CPU."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.min_proxy", "--port", str(port), "--upstream-client", client,
                             "--upstream-uds", str(settings.engine_socket)], cwd=REPO_ROOT,
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=pinned(cpus))
    deadline = time.monotonic() + 30
    while not _listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the minimal proxy did not start")
        time.sleep(0.05)
    return proc


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def cpu_split() -> tuple[set[int] | None, set[int] | None, str]:
    """(gateway's CPUs, load generator's and stub's CPUs, how it was split)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, "not pinned (only one CPU available)"
    return {cpus[0]}, set(cpus[1:]), f"gateway on CPU {cpus[0]}, wrk and the stub on CPU {','.join(map(str, cpus[1:]))}"


@dataclass
class Target:
    """Something one client's chat requests are sent to: its URL, bearer and process."""

    name: str
    url: str
    bearer: str
    pid: int


def one_client(targets: list[Target], chat: Route, scratch: Path, cpus: set[int] | None,
               seconds: int) -> list[list[object]]:
    """One client, back to back and paced like the one-client vLLM benchmark (an answer about every
    45 ms), against each target: its latency and the CPU its process spends per request, with an
    upstream that takes no time."""
    rows = []
    for target in targets:
        headers = {"Authorization": target.bearer, "Content-Type": "application/json"}
        for pause in (0, PACE_MS):
            script = scratch / f"one-client-{pause}.lua"
            script.write_text(lua_script("POST", headers, chat.body, histogram=True, pause_ms=pause))
            user0, system0 = cpu_times(target.pid)
            result = run_wrk(target.url + chat.path, script, connections=1, seconds=seconds, cpus=cpus)
            user1, system1 = cpu_times(target.pid)
            user, cpu = user1 - user0, user1 - user0 + system1 - system0
            lat = Latency.of(result.latencies_ms())
            rows.append([target.name, "back to back" if not pause else f"{pause} ms pause after each answer",
                         result.requests, f"{result.rps:,.0f}", f"{lat.p50_ms:.2f}", f"{lat.p99_ms:.2f}",
                         f"{1e6 * cpu / result.requests:.0f}", f"{100 * user / cpu:.0f}%" if cpu else ""])
    return rows


def paced_note(rows: list[list[object]]) -> str:
    """What one client's rows say: the per-wake cost of this machine, and the gateway beyond the
    floor of any Python proxy."""
    def number(row: list[object], column: int) -> float:
        return float(str(row[column]).replace(",", ""))

    by = {(row[0], row[1] != "back to back"): row for row in rows}
    growth = ", ".join(f"{name} {number(by[name, True], 6) / number(by[name, False], 6):.1f}x"
                       for name in (DIRECT, MIN_PROXY, AIOHTTP_PROXY, GATEWAY))
    direct, floor, client, gateway = (number(by[name, True], 4) for name in (DIRECT, MIN_PROXY, AIOHTTP_PROXY, GATEWAY))
    return (f"Paced like benchmark 3's one-client runs, every process spends several times the CPU per request it "
            f"spends back to back ({growth}): on this machine a process woken after 45 ms idle runs the same code "
            "slower, whatever the code. That CPU lies on the request's path. Paced p50: straight to the stand-in "
            f"{direct:.2f} ms, through the minimal Python proxy {floor:.2f} ms (+{floor - direct:.2f} ms: the floor of "
            f"any Python process in the path here), through it with aiohttp as its upstream client {client:.2f} ms "
            f"(+{client - floor:.2f} ms for the client library), through the gateway {gateway:.2f} ms "
            f"(+{gateway - direct:.2f} ms, {gateway - floor:.2f} ms beyond the floor).")


def profile_chat(gateway: GatewayProcess, url: str, script: Path, cpus: set[int] | None, scratch: Path,
                 seconds: int) -> str | tuple:
    """py-spy's view of the gateway under the chat route's load (a run of its own, not measured:
    sampling slows the process), or why there is none."""
    if profile.py_spy() is None:
        return "py-spy is not installed (`pip install py-spy` into the virtualenv adds this breakdown)"
    out = scratch / "gateway.pyspy"
    spy = profile.record(gateway.proc.pid, seconds, out)
    time.sleep(1)  # py-spy attaches first
    run_wrk(url, script, connections=CONNECTIONS, seconds=seconds, cpus=cpus)
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not out.exists():
        return f"py-spy could not sample the gateway: {err.decode(errors='replace').strip()[-300:]}"
    return profile.breakdown(out.read_text())


def run(quick: bool) -> Section:
    wrk_path()  # fail with the install hint before anything starts
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    rounds, seconds = (2, 4) if quick else (4, 8)
    gateway_cpus, load_cpus, split = cpu_split()
    section = Section(
        title="2. Gateway capacity",
        what=("Requests per second per gateway CPU core: the gateway as a service (`python -m airlock gateway`) in "
              "front of an instant stand-in engine on the engine's Unix socket (the production transport), with an "
              f"`inference` key, its rate limits (rpm {RPM:,}, tpm {TPM:,}: checked and charged, never hit) and the "
              f"metrics on. wrk drives it with {CONNECTIONS} keep-alive connections; {split}. Per core = requests / "
              "gateway CPU seconds (utime + stime from /proc, all threads). Baseline: GET /healthz on the same "
              f"process. {rounds} runs of {seconds} s per route, routes alternating; higher is better."))
    items = routes()
    with tempfile.TemporaryDirectory(prefix="airlock-bench-cap-") as tmp:
        scratch = Path(tmp)
        settings = Settings(home=scratch / "home", models_dir=REPO_ROOT / "offline_models", serve_base_model=BASE_MODEL,
                            gateway_port=free_port(), store_backend="local", engine_transport="uds")
        settings.ensure_dirs()
        airlock = Airlock.open(settings)
        key_id, key = create_key(airlock.meta, "bench-capacity", role="inference", rpm=RPM, tpm=TPM, actor="bench")
        prepare_engine_dir(settings)  # a fresh engine secret, which both stand-ins check
        stub = start_stub(settings, load_cpus)
        direct_port, proxy_port, aiohttp_port = free_port(), free_port(), free_port()
        direct = start_stub(settings, load_cpus, port=direct_port)
        min_proxy = start_min_proxy(settings, proxy_port, gateway_cpus)
        aiohttp_proxy = start_min_proxy(settings, aiohttp_port, gateway_cpus, client="aiohttp")
        gateway = GatewayProcess(settings, cpus=gateway_cpus)
        try:
            gateway.start()
            scripts = {}
            for route in items:
                headers = {"Authorization": f"Bearer {key}"}
                if route.body is not None:
                    headers["Content-Type"] = "application/json"
                scripts[route.name] = scratch / f"{route.path.strip('/').replace('/', '-')}.lua"
                scripts[route.name].write_text(lua_script(route.method, headers, route.body, histogram=False))
            for route in items:  # warm: connections, the engine session, first-call code paths
                run_wrk(gateway.url + route.path, scripts[route.name], connections=CONNECTIONS, seconds=2, cpus=load_cpus)
            for n in range(rounds):
                for route in (items if n % 2 == 0 else items[::-1]):
                    g0, s0 = gateway.cpu_seconds, cpu_seconds(stub.pid)
                    result = run_wrk(gateway.url + route.path, scripts[route.name], connections=CONNECTIONS,
                                     seconds=seconds, cpus=load_cpus)
                    if result.failed or not result.requests:
                        raise RuntimeError(f"{route.name}: {result.requests} requests, failures {result.errors}; the "
                                           f"gateway reports: {gateway_trouble(gateway.url) or 'nothing'}")
                    route.runs.append((result, gateway.cpu_seconds - g0, cpu_seconds(stub.pid) - s0))
            limiter_rows = airlock.meta.query("SELECT kind FROM rate_buckets WHERE key_id = ?", (key_id,))
            chat = items[-1]
            engine_bearer = f"Bearer {settings.engine_secret_path.read_text().strip()}"
            targets = [Target(DIRECT, f"http://127.0.0.1:{direct_port}", engine_bearer, direct.pid),
                       Target(MIN_PROXY, f"http://127.0.0.1:{proxy_port}", engine_bearer, min_proxy.pid),
                       Target(AIOHTTP_PROXY, f"http://127.0.0.1:{aiohttp_port}", engine_bearer, aiohttp_proxy.pid),
                       Target(GATEWAY, gateway.url, f"Bearer {key}", gateway.proc.pid)]
            paced = one_client(targets, chat, scratch, load_cpus, seconds=4 if quick else 10)
            profiled = profile_chat(gateway, gateway.url + chat.path, scripts[chat.name], load_cpus, scratch,
                                    seconds=5 if quick else 10)
        finally:
            gateway.stop()
            for proc in (stub, direct, min_proxy, aiohttp_proxy):
                stop_group(proc)

    healthz, _, chat = items
    section.add("chat completions per second per gateway core", f"{healthz.per_core:,.0f} (GET /healthz)",
                f"{chat.per_core:,.0f}", f"{chat.per_core / healthz.per_core:.3f}", f">= {TARGET_PER_CORE:,}",
                chat.per_core >= TARGET_PER_CORE)
    rows = []
    for route in items:
        stub_cpu = sum(s for _, _, s in route.runs)
        rows.append([route.name, route.what, route.requests, f"{route.requests / route.wall:,.0f}",
                     f"{route.gateway_cpu / route.wall:.2f}", f"{route.per_core:,.0f}",
                     f"{1e6 * route.gateway_cpu / route.requests:.0f}",
                     f"{1e6 * stub_cpu / route.requests:.0f}" if route.body else ""])
    section.details.append(("Per route, all runs pooled",
                            ("route", "what it adds", "requests", "req/s", "gateway CPU (cores busy)",
                             "req/s per gateway core", "gateway CPU us/request", "stub CPU us/request"), rows))
    section.details.append(("Each run: requests per gateway CPU second",
                            ("route", *(f"run {n + 1}" for n in range(rounds))),
                            [[r.name, *(f"{w.requests / c:,.0f}" if c else "n/a" for w, c, _ in r.runs)] for r in items]))
    section.details.append(("One client on the chat route: latency and the CPU per request of the process "
                            "answering (the stand-in engine answers at once)",
                            ("sent to", "pace", "requests", "req/s", "p50 ms", "p99 ms", "its CPU us/request",
                             "of it user time"), paced))
    if isinstance(profiled, str):
        section.notes.append(f"No CPU breakdown: {profiled}.")
    else:
        layers, functions, samples = profiled
        section.details.append((f"Where the gateway's CPU goes on the chat route (py-spy, {samples:,} samples of "
                                "the thread holding the GIL, during an extra run)",
                                ("layer", "share"), [[k, f"{100 * v:.1f}%"] for k, v in layers]))
        section.details.append(("The ten functions with the most own time on the chat route",
                                ("function", "share"), [[k, f"{100 * v:.1f}%"] for k, v in functions]))
    extra_us = 1e6 * (chat.gateway_cpu / chat.requests - healthz.gateway_cpu / healthz.requests)
    charged = sorted(r["kind"] for r in limiter_rows)
    section.notes.append(paced_note(paced))
    section.notes += [
        f"The chat route costs the gateway {extra_us:.0f} us "
        "of CPU more per request than /healthz: what a proxied chat request adds to the bare server (key, role, "
        "limits, recorder, body checks, one HTTP exchange with the engine over its socket, reshaping the answer "
        "to OpenAI's schema, the relay) beyond what /healthz costs in FastAPI; the rest is the server every route "
        "pays.",
        "The stand-in engine spends the CPU per request in the last column, a small fraction of the gateway's, so "
        "it is never what limits the rate. The gateway's CPU column near 1.00 means its core was saturated; below "
        "1.00 the rate was bounded elsewhere (wrk and the stub sharing the other core) and the per-core figure "
        "still holds, since it divides by the CPU the gateway actually used.",
        f"Rate limits were charged: the key's rate_buckets rows after the run: {charged or 'none'}.",
        "For scale: LiteLLM's published proxy figures come to roughly 25-130 requests per second per vCPU.",
    ]
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    return section
