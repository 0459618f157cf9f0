"""Benchmark 9: what TLS adds to the gateway, against the same gateway over plain HTTP.

Two gateway processes of the same build on the same home (`python -m airlock gateway`), one plain
and one with AIRLOCK_TLS_CERT/KEY (a self-signed ECDSA P-256 pair from airlock.tls), both in
front of the stand-in engine on the engine's Unix socket: the engine answers at once, so what
differs is the gateway's own cost and TLS's, not vLLM's. wrk, which speaks https, sends the same
chat completion to each; short runs alternate between the two (http, https, https, http, ...),
so a change in the machine's load lands on both. Both gateways are pinned to one core, wrk and
the stand-in to the other, as in the capacity benchmark.

Connections are kept alive, so the handshake is paid once per connection, not per request, as
OpenAI clients (httpx pools) do. A configuration with `Connection: close` makes each request a
new connection, for information: wrk starts a request's clock only once its connection (and TLS
handshake) is up, so there the figure is wall time per request (1 / requests per second with
one connection), which includes the connect, the handshake and the close.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from airlock.access.keys import create_key
from airlock.config import REPO_ROOT, Settings
from airlock.context import Airlock
from airlock.serve.vllm_server import prepare_engine_dir
from airlock.tls import generate_self_signed, local_gateway
from bench.capacity_bench import CHAT, RPM, TPM, cpu_split, start_stub
from bench.procs import GatewayProcess, free_port, gateway_trouble, stop_group
from bench.report import Section
from bench.stats import Latency, median, percentile, ratio
from bench.wrk import WrkResult, lua_script, run_wrk, wrk_path

TARGET_ADDED_MS = 0.5
PATHS = ("http", "https")
PACE_MS = 45  # about one client's request rate against vLLM in benchmark 3


@dataclass
class Plan:
    label: str
    connections: int
    rounds: int
    seconds: int
    pause_ms: int = 0
    new_connection: bool = False
    judged: bool = False
    runs: dict[str, list[tuple[WrkResult, float]]] = field(default_factory=lambda: {p: [] for p in PATHS})

    def latency(self, path: str) -> Latency:
        return Latency.of([x for result, _ in self.runs[path] for x in result.latencies_ms()])

    def requests(self, path: str) -> int:
        return sum(result.requests for result, _ in self.runs[path])

    def rps(self, path: str) -> float:
        return self.requests(path) / sum(result.seconds for result, _ in self.runs[path])

    def cpu_us(self, path: str) -> float:
        """The gateway's CPU per request on this path (its process only, over its own runs)."""
        return 1e6 * sum(cpu for _, cpu in self.runs[path]) / self.requests(path)

    def wall_ms(self, path: str) -> float:
        """Wall time per request of one connection: 1 / requests per second."""
        return 1000 * self.connections / self.rps(path)

    def paired_p50(self) -> list[float]:
        """Round by round, the https run's p50 minus the http run's taken beside it."""
        return [percentile(s.latencies_ms(), 50) - percentile(p.latencies_ms(), 50)
                for (p, _), (s, _) in zip(self.runs["http"], self.runs["https"], strict=True)]


def plans(quick: bool) -> list[Plan]:
    """One client alternates many short runs, as in benchmark 3, so that load from elsewhere on the
    machine lands on both paths; the other configurations carry no verdict and get fewer."""
    one, many, fresh = ((6, 1), (3, 2), (2, 2)) if quick else ((12, 2), (6, 4), (4, 2))
    return [Plan("1 client, back to back", 1, *one, judged=True),
            Plan(f"1 client, {PACE_MS} ms pause after each answer", 1, *one, pause_ms=PACE_MS, judged=True),
            Plan("16 clients", 16, *many),
            Plan("1 client, a new connection per request", 1, *fresh, new_connection=True)]


def negotiated(port: int, context: ssl.SSLContext, extensions: dict) -> str:
    """The TLS version and cipher the gateway agrees with a Python client."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=extensions.get("sni_hostname", "127.0.0.1")) as tls:
            return f"{tls.version()}, {tls.cipher()[0]}"


def measure(plan: Plan, gateways: dict[str, GatewayProcess], script: Path, cpus: set[int] | None) -> None:
    for path in PATHS:  # warm: first-call code paths, the pool of engine connections, the TLS context
        run_wrk(gateways[path].url + "/v1/chat/completions", script, connections=plan.connections,
                seconds=1, cpus=cpus)
    for r in range(plan.rounds):
        for path in (PATHS if r % 2 == 0 else PATHS[::-1]):
            gateway = gateways[path]
            cpu0 = gateway.cpu_seconds
            result = run_wrk(gateway.url + "/v1/chat/completions", script, connections=plan.connections,
                             seconds=plan.seconds, cpus=cpus)
            if result.failed or not result.requests:
                probe = local_gateway(gateway.settings)
                trouble = gateway_trouble(gateway.url, verify=probe.verify, extensions=probe.extensions)
                raise RuntimeError(f"{plan.label}, {path}: {result.requests} requests, failures {result.errors}; "
                                   f"the gateway reports: {trouble or 'nothing'}")
            plan.runs[path].append((result, gateway.cpu_seconds - cpu0))


def run(quick: bool) -> Section:
    wrk_path()
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    gateway_cpus, load_cpus, split = cpu_split()
    chosen = plans(quick)
    section = Section(
        title="9. Gateway over TLS against plain HTTP",
        what=("The same gateway build as two service processes on one home, one serving plain HTTP (baseline) and "
              "one serving TLS with a self-signed ECDSA P-256 certificate (AIRLOCK_TLS_CERT/KEY), both in front of "
              "the instant stand-in engine on the engine's Unix socket (not vLLM: the figures are the gateway's own "
              "cost and TLS's). wrk sends the chat completion of benchmark 2 with an `inference` key over "
              f"keep-alive connections, so the TLS handshake is paid once per connection; {split}. Runs per path, "
              "the paths alternating run by run: " + "; ".join(f"{p.label}: {p.rounds} of {p.seconds} s" for p in chosen)
              + ". Target: at most "
              f"+{TARGET_ADDED_MS} ms at p50 with one client; the ratio is TLS / plain."))
    with tempfile.TemporaryDirectory(prefix="airlock-bench-tls-") as tmp:
        scratch = Path(tmp)
        plain = Settings(home=scratch / "home", models_dir=REPO_ROOT / "offline_models", serve_base_model=CHAT["model"],
                         gateway_port=free_port(), store_backend="local", engine_transport="uds")
        plain.ensure_dirs()
        cert, key_file = scratch / "tls" / "gateway.crt", scratch / "tls" / "gateway.key"
        info = generate_self_signed(cert, key_file, ["localhost", "127.0.0.1"])
        tls = plain.model_copy(update={"gateway_port": free_port(), "tls_cert": cert, "tls_key": key_file})
        airlock = Airlock.open(plain)
        _, key = create_key(airlock.meta, "bench-tls", role="inference", rpm=RPM, tpm=TPM, actor="bench")
        prepare_engine_dir(plain)
        stub = start_stub(plain, load_cpus)
        gateways = {"http": GatewayProcess(plain, cpus=gateway_cpus, name="gateway-http"),
                    "https": GatewayProcess(tls, cpus=gateway_cpus, name="gateway-https")}
        try:
            for gateway in gateways.values():
                gateway.start()
            probe = local_gateway(tls)
            agreed = negotiated(tls.gateway_port, probe.verify, probe.extensions)
            for plan in chosen:
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                if plan.new_connection:
                    headers["Connection"] = "close"
                script = scratch / f"chat-{plan.connections}-{plan.pause_ms}-{plan.new_connection}.lua"
                script.write_text(lua_script("POST", headers, json.dumps(CHAT), histogram=True, pause_ms=plan.pause_ms))
                measure(plan, gateways, script, load_cpus)
        finally:
            for gateway in gateways.values():
                gateway.stop()
            stop_group(stub)
    report(section, chosen, agreed, info.fingerprint)
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    return section


def report(section: Section, chosen: list[Plan], agreed: str, fingerprint: str) -> None:
    rows, paired = [], []
    for plan in chosen:
        http, https = plan.latency("http"), plan.latency("https")
        if plan.new_connection:
            added = plan.wall_ms("https") - plan.wall_ms("http")
            section.add(f"wall time per request, {plan.label} (1 / req/s)", f"{plan.wall_ms('http'):.2f} ms",
                        f"{plan.wall_ms('https'):.2f} ms ({added:+.2f} ms)",
                        f"{ratio(plan.wall_ms('https'), plan.wall_ms('http')):.3f}", "(information)", None)
        for q in ("p50", "p99"):
            judged = plan.judged and q == "p50"
            added = https.get(q) - http.get(q)
            section.add(f"{q} latency, {plan.label}", f"{http.get(q):.2f} ms", f"{https.get(q):.2f} ms ({added:+.2f} ms)",
                        f"{ratio(https.get(q), http.get(q)):.3f}",
                        f"<= +{TARGET_ADDED_MS} ms" if judged else "(information)",
                        added <= TARGET_ADDED_MS if judged else None)
        for path in PATHS:
            lat = plan.latency(path)
            rows.append([plan.label, path, lat.n, f"{lat.p50_ms:.2f}", f"{lat.p99_ms:.2f}", f"{lat.mean_ms:.2f}",
                         f"{plan.rps(path):,.0f}", f"{plan.wall_ms(path):.2f}", f"{plan.cpu_us(path):.0f}"])
        rows.append([plan.label, "added by TLS", "", f"{https.p50_ms - http.p50_ms:+.2f}",
                     f"{https.p99_ms - http.p99_ms:+.2f}", f"{https.mean_ms - http.mean_ms:+.2f}",
                     f"{ratio(plan.rps('https'), plan.rps('http')):.3f}x",
                     f"{plan.wall_ms('https') - plan.wall_ms('http'):+.2f}",
                     f"{plan.cpu_us('https') - plan.cpu_us('http'):+.0f}"])
        if not plan.new_connection:
            diffs = sorted(plan.paired_p50())
            paired.append(f"{plan.label}: median {median(diffs):+.3f} ms, range {diffs[0]:+.3f} to {diffs[-1]:+.3f} ms")
    section.details.append(("Latency (ms), throughput and the gateway's CPU per request",
                            ("configuration", "path", "requests", "p50", "p99", "mean", "req/s",
                             "wall ms per request per connection", "gateway CPU us/request"), rows))
    one = next(p for p in chosen if p.judged)
    handshake = next(p for p in chosen if p.new_connection)
    crowd = next(p for p in chosen if p.connections > 1)
    section.notes += [
        f"TLS as a Python client negotiates it with the gateway: {agreed}; the certificate's SHA-256 fingerprint "
        f"was {fingerprint[:23]}... (a new self-signed pair per run). wrk does not verify the certificate (it has "
        "no option to); a verifying client checks the chain once per connection, not per request.",
        "Keep-alive: every configuration but the last reuses its connections for the whole run, so the handshake "
        "is out of the per-request figures, as it is for OpenAI clients, which pool connections. In the last one "
        "every request opens a new connection (`Connection: close`); wrk's latency there excludes the connect and "
        "the handshake, so its wall time per request (1 / req/s, one connection) is the figure that includes "
        f"them: {handshake.wall_ms('https') - handshake.wall_ms('http'):+.2f} ms per new connection over TLS, of "
        f"which the gateway's CPU is {(handshake.cpu_us('https') - handshake.cpu_us('http')) / 1000:+.2f} ms; the "
        "rest is the client's side of the handshake (wrk, on the other core) and its extra round trip.",
        f"The gateway's CPU per request, one client back to back: {one.cpu_us('http'):.0f} us plain, "
        f"{one.cpu_us('https'):.0f} us over TLS (uvicorn's TLS is Python's ssl module through asyncio: each "
        "request and answer is encrypted and decrypted in the gateway's event loop).",
        "Run by run (p50 of each TLS run minus the plain run beside it): " + "; ".join(paired) + ". The paced "
        "runs are the noisiest: a process woken after 45 ms idle runs its code slower (benchmark 2), and by how "
        "much depends on whatever else the machine runs at that moment.",
        f"With 16 clients the gateway kept {crowd.rps('http') * crowd.cpu_us('http') / 1e6:.2f} of its core busy "
        f"plain and {crowd.rps('https') * crowd.cpu_us('https') / 1e6:.2f} over TLS: near saturation, TLS's extra "
        f"CPU per request ({crowd.cpu_us('https') - crowd.cpu_us('http'):+.0f} us) adds to the wait of every "
        "request queued behind it, not only to its own time.",
        "The engine is the stand-in of benchmark 2, not vLLM: with vLLM, whose answers take tens of milliseconds "
        "here, TLS's share of a request's time would be smaller still.",
    ]
