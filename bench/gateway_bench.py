"""Benchmark 3: what the gateway adds to a chat completion, against calling vLLM directly.

wrk sends the same request bytes to vLLM (with the engine's secret, as airlock's own processes
do) and to the gateway (with an `inference` API key), which runs as its own service process. For
each of 1 and 16 concurrent clients, streaming and not, short wrk runs alternate between the two
paths (direct, gateway, gateway, direct, ...), so a change in the machine's load lands on both;
each path's latencies are pooled over its runs. Every request generates the same number of tokens
(temperature 0, ignore_eos), so vLLM's share of the work is identical.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.procs import gateway_trouble, upstream_wait
from bench.report import Section
from bench.serving import BASE_MODEL, Stack
from bench.stats import Latency, median, percentile, ratio
from bench.wrk import WrkResult, lua_script, run_wrk, wrk_path

TARGET_ADDED_MS = 1.0
# A few failed requests are reported; more than this share of a path's requests stops the benchmark.
MAX_FAILED = 0.01
MAX_TOKENS = 8
MESSAGES = [{"role": "user", "content": "Say hello to the operator."}]
PATHS = ("direct", "gateway")


@dataclass
class Plan:
    clients: int
    stream: bool
    seconds: int
    rounds: int

    @property
    def label(self) -> str:
        return f"{self.clients} client{'s' if self.clients > 1 else ''}, {'streaming' if self.stream else 'non-streaming'}"


def plans(quick: bool) -> list[Plan]:
    """One client alternates 2-second runs (the finest wrk's whole seconds allow beside its start-up),
    sixteen clients 4-second ones: about 40 and 500 requests per run."""
    one, many = ((1, 6), (2, 3)) if quick else ((2, 12), (4, 6))
    return [Plan(c, s, *(one if c == 1 else many)) for c in (1, 16) for s in (False, True)]


def running_requests(metrics: str) -> float | None:
    """vLLM's own gauge of requests running in its engine, from its /metrics text."""
    values = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              if line.startswith("vllm:num_requests_running")]
    return sum(values) if values else None


@contextmanager
def engine_running(url: str, every: float = 0.25) -> Iterator[list[float]]:
    """Sample vLLM's running-requests gauge every `every` seconds while the block runs."""
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        with httpx.Client(trust_env=False, timeout=2) as client:
            while not stop.wait(every):
                try:
                    value = running_requests(client.get(f"{url}/metrics").text)
                except httpx.HTTPError:
                    continue
                if value is not None:
                    samples.append(value)

    thread = threading.Thread(target=sample, name="bench-vllm-gauge", daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(timeout=5)


def body(stream: bool) -> str:
    return json.dumps({"model": BASE_MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0,
                       "ignore_eos": True, "stream": stream})


def measure(stack: Stack, plan: Plan, scratch: Path) -> dict:
    urls = {"direct": f"{stack.engine_url}/v1/chat/completions",
            "gateway": f"{stack.gateway.url}/v1/chat/completions"}
    scripts = {}
    for path, headers in (("direct", stack.engine_headers), ("gateway", stack.headers)):
        scripts[path] = scratch / f"{path}-{plan.clients}-{plan.stream}.lua"
        scripts[path].write_text(lua_script("POST", headers, body(plan.stream), histogram=True))
    for path in PATHS:  # warm connections, pools and vLLM's caches on both paths
        run_wrk(urls[path], scripts[path], connections=plan.clients, seconds=1)
    runs: dict[str, list[WrkResult]] = {p: [] for p in PATHS}
    gauge: dict[str, list[float]] = {p: [] for p in PATHS}
    gateway_cpu, waited, waits = 0.0, 0.0, 0.0
    for r in range(plan.rounds):
        for path in (PATHS if r % 2 == 0 else PATHS[::-1]):
            cpu0, (wait0, count0) = stack.gateway.cpu_seconds, upstream_wait(stack.gateway.url)
            # With many clients, vLLM's own view of how many of them it is running (see the notes).
            with (engine_running(stack.engine_url) if plan.clients > 1 else nullcontext([])) as samples:
                result = run_wrk(urls[path], scripts[path], connections=plan.clients, seconds=plan.seconds)
            gauge[path] += samples
            if path == "gateway":
                # The gateway idles while requests go direct: only its own runs are counted.
                gateway_cpu += stack.gateway.cpu_seconds - cpu0
                wait1, count1 = upstream_wait(stack.gateway.url)
                waited, waits = waited + wait1 - wait0, waits + count1 - count0
            if not result.requests:
                raise RuntimeError(f"{plan.label}, {path}: no request completed ({result.errors})")
            runs[path].append(result)
    out = {path: {"latency": Latency.of([x for res in results for x in res.latencies_ms()]),
                  "rps": sum(res.requests for res in results) / sum(res.seconds for res in results),
                  "failed": sum(res.failed for res in results),
                  "engine_idle": (sum(1 for v in gauge[path] if v == 0) / len(gauge[path])) if gauge[path] else None}
           for path, results in runs.items()}
    for path in PATHS:
        if out[path]["failed"] > MAX_FAILED * out[path]["latency"].n:
            raise RuntimeError(f"{plan.label}, {path}: {out[path]['failed']} of {out[path]['latency'].n} requests "
                               f"failed; the gateway reports: {gateway_trouble(stack.gateway.url) or 'nothing'}")
    out["gateway_cpu_ms"] = 1000 * gateway_cpu / out["gateway"]["latency"].n
    # Round r's two runs were taken back to back: the difference of their p50s is one paired sample.
    out["paired_p50"] = [percentile(g.latencies_ms(), 50) - percentile(d.latencies_ms(), 50)
                         for d, g in zip(runs["direct"], runs["gateway"], strict=True)]
    out["upstream_ms"] = 1000 * waited / waits if waits else 0.0
    return out


def sse_events(stack: Stack) -> int:
    """How many SSE events vLLM sends for one streamed answer: the gateway relays each one."""
    with httpx.Client(trust_env=False, timeout=60) as client:
        with client.stream("POST", f"{stack.engine_url}/v1/chat/completions", content=body(True),
                           headers=stack.engine_headers) as resp:
            return sum(1 for line in resp.iter_lines() if line.startswith("data:"))


def run(stack: Stack, quick: bool) -> Section:
    wrk_path()
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    chosen = plans(quick)
    section = Section(
        title="3. Gateway overhead against direct vLLM",
        what=(f"Chat completions (a short prompt, max_tokens {MAX_TOKENS}, temperature 0, ignore_eos) sent by wrk "
              "straight to vLLM with the engine's secret (baseline) and through the gateway with an `inference` API "
              "key (airlock: key, role, rate limits, model resolution, proxy, metrics), vLLM's CPU build on the "
              "reference model. Latency is wrk's, to the last byte of the answer. Both paths reach vLLM over "
              "loopback TCP here (wrk cannot open a Unix socket); production uses the engine's Unix socket. "
              f"{chosen[0].rounds} runs of {chosen[0].seconds} s per path and configuration, the paths alternating. "
              f"Target: at most +{TARGET_ADDED_MS:.0f} ms at p50 with one client; the ratio is gateway / direct."))
    rows, cpu, failed, stalls, upstream, paired = [], {}, 0, {}, {}, []
    with tempfile.TemporaryDirectory(prefix="airlock-bench-gw-") as tmp:
        for plan in chosen:
            m = measure(stack, plan, Path(tmp))
            d, g = m["direct"]["latency"], m["gateway"]["latency"]
            cpu[(plan.clients, plan.stream)] = m["gateway_cpu_ms"]
            if plan.clients == 1:
                diffs = sorted(m["paired_p50"])
                per_run = (m["direct"]["latency"].n + m["gateway"]["latency"].n) / (2 * plan.rounds)
                paired.append(f"{plan.label} (about {per_run:.0f} requests per run): median {median(diffs):+.2f} ms, middle half {percentile(diffs, 25):+.2f} "
                              f"to {percentile(diffs, 75):+.2f} ms, range {diffs[0]:+.2f} to {diffs[-1]:+.2f} ms")
            for q in ("p50", "p99"):
                added = g.get(q) - d.get(q)
                judged = plan.clients == 1 and q == "p50"
                target = f"<= +{TARGET_ADDED_MS:.0f} ms" if judged else "(information)"
                section.add(f"{q} latency, {plan.label}", f"{d.get(q):.1f} ms", f"{g.get(q):.1f} ms ({added:+.2f} ms)",
                            f"{ratio(g.get(q), d.get(q)):.3f}", target, added <= TARGET_ADDED_MS if judged else None)
            for path in PATHS:
                lat = m[path]["latency"]
                failed += m[path]["failed"]
                idle = m[path]["engine_idle"]
                if idle is not None:
                    stalls[plan.label, path] = idle
                if path == "gateway" and plan.clients > 1 and not plan.stream:
                    upstream[plan.label] = (m["upstream_ms"], lat.mean_ms, m["gateway_cpu_ms"] * m[path]["rps"] / 1000)
                rows.append([plan.label, path, lat.n, m[path]["failed"], f"{lat.p50_ms:.1f}", f"{lat.p99_ms:.1f}",
                             f"{lat.mean_ms:.1f}", f"{m[path]['rps']:.1f}",
                             f"{m['gateway_cpu_ms']:.2f}" if path == "gateway" else "",
                             "" if idle is None else f"{100 * idle:.0f}%"])
            rows.append([plan.label, "added by the gateway", "", "", f"{g.p50_ms - d.p50_ms:+.2f}",
                         f"{g.p99_ms - d.p99_ms:+.2f}", f"{g.mean_ms - d.mean_ms:+.2f}",
                         f"{ratio(m['gateway']['rps'], m['direct']['rps']):.3f}x", "", ""])
    if failed:
        section.notes.append(f"{failed} requests failed (not 2xx; their latencies are in the figures); the gateway's "
                             f"own count: {gateway_trouble(stack.gateway.url) or 'nothing but 2xx'}.")
    events = sse_events(stack)
    per_event = (cpu[(1, True)] - cpu[(1, False)]) / max(events - 1, 1)
    section.details.append(("Latency (ms) and throughput per configuration",
                            ("configuration", "path", "requests", "failed", "p50", "p99", "mean", "req/s",
                             "gateway CPU ms/request", "vLLM running none"), rows))
    section.notes += [
        "Load generator: wrk (C, one thread, one keep-alive connection per client), so the client's own CPU per "
        "request is small and equal for both paths. Latencies are wrk's per-request measurements with its "
        "coordinated-omission correction removed (the clients are closed loops; see bench/wrk.py), pooled over "
        "the runs of each path.",
        f"wrk, the gateway, vLLM's API server and its engine all share this machine's {os.cpu_count()} cores (vLLM's "
        "CPU build pins its model worker to one of them and leaves the other to everything else), so every "
        "millisecond of CPU the gateway spends on a request is taken from vLLM's API server and engine loop.",
        "The 16-client rows carry no verdict. vLLM's own gauge of requests running, sampled every 0.25 s (last "
        "column: the share of samples with none running while 16 requests were in flight), shows vLLM running "
        "nothing for part of the time on both paths: " + "; ".join(
            f"{label}, {path} {100 * share:.0f}%" for (label, path), share in stalls.items()) + ". "
        + "".join(f"Through the gateway ({label}), a request waited {wait:.0f} ms on average for vLLM's answer "
                  f"(the gateway's own metric, from sending to the response headers) of {total:.0f} ms in all, "
                  f"while the gateway used {cores:.2f} of a core. "
                  + ("So those requests spent their time between the gateway's send and vLLM's engine, not inside "
                     "the gateway; why vLLM's engine sits idle more or less often on one path than on the other was "
                     "not established here." if wait > 0.8 * total else "")
                  for label, (wait, total, cores) in upstream.items()),
        f"A streamed answer here is {events} SSE events, each relayed as its own message; with one client a "
        f"streamed request costs the gateway {cpu[(1, True)] - cpu[(1, False)]:+.2f} ms of CPU more than a plain "
        f"one, about {per_event:.2f} ms per relayed event.",
        f"Run by run: each round's direct and gateway runs were taken back to back, so the difference of their "
        f"p50s is a paired sample of what the gateway adds at one client ({chosen[0].rounds} rounds): " + "; ".join(paired) + ". The verdict above is on the pooled "
        "p50s; the spread says how far one run's figure can stray on this shared 2-core machine.",
        "p99 from a few hundred requests is one of the slowest few: read it as a tail indication, not a precise figure.",
    ]
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    return section
