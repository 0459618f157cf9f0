"""Benchmark 16: replicas. Two replicas of one base model against one, and a replica's kill -9
under load.

Each configuration is an appliance as `airlock up` runs it from an engine list (AIRLOCK_ENGINES):
`airlock-tiny` with one replica on CPU core 0, or two replicas on cores 0 and 1, each its own
supervised vLLM on its own socket, behind the gateway's pool (least outstanding requests). The
official openai client (async, one client per concurrent request, retries off) asks the base model
for 16 tokens (ignore_eos: every request the same work) with 16 and then 64 requests always in
flight. Throughput is answers per second over the measured seconds; the ratio is two replicas over
one. The machine's CPU use over each measurement is shown beside it, since on a machine of two
cores the two replicas, the gateway and the load generator share them.

Failover, on the two replicas at 16 requests in flight: replica 1's engine and its children are
killed with SIGKILL. Counted: the requests that failed, and how many of them had started before the
kill (they may fail: they were on it); the time from the kill to the last failure; the time until
latency is steady again (the end of the first of three seconds in a row with no failure and a
median within 1.5x of the 10 s before the kill); the time until the supervisor's restarted replica
answers again (the gateway's per-engine count grows); and a timeline in 5 s steps.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

from airlock.access.keys import create_key
from airlock.config import REPO_ROOT, Settings
from airlock.context import Airlock
from bench.procs import ApplianceProcess, family_cpu_seconds, free_port, metrics_headers, signal_family
from bench.report import Section
from bench.serving import BASE_MODEL, KEY_RPM, KEY_TPM
from bench.stats import median, percentile

CONCURRENCY = (16, 64)
MAX_TOKENS = 16
QUESTION = [{"role": "user", "content": "Tell me about the appliance."}]
TARGET_RATIO = 1.6
STEADY_WITHIN = 1.5  # a second's median within this of the median before the kill is steady
STEADY_SECONDS = 3  # ... for this many seconds in a row, with no failure
TIMELINE_S = 5.0
TIMEOUT_S = 120.0


@dataclass
class Answer:
    started: float  # time.monotonic()
    ended: float
    error: str | None = None


def engines(replicas: int) -> str:
    return json.dumps([{"model": BASE_MODEL, "replicas": replicas, "cpus": [str(n) for n in range(replicas)]}])


def busy_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


async def load(url: str, key: str, clients: int, until: threading.Event | float,
               answers: list[Answer]) -> None:
    """`clients` requests always in flight until `until` (a time.monotonic() deadline or an event)."""
    async def client_loop() -> None:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=TIMEOUT_S,
                                      http_client=openai.DefaultAsyncHttpxClient(trust_env=False)) as client:
            while not (until.is_set() if isinstance(until, threading.Event) else time.monotonic() >= until):
                answer = Answer(time.monotonic(), 0.0)
                try:
                    resp = await client.chat.completions.create(model=BASE_MODEL, messages=QUESTION,
                                                                max_tokens=MAX_TOKENS, temperature=0,
                                                                extra_body={"ignore_eos": True})
                    if not resp.choices or not resp.choices[0].message.content:
                        answer.error = "answer without text"
                except Exception as exc:  # noqa: BLE001 - every failure is counted by kind
                    answer.error = f"HTTP {exc.status_code}" if isinstance(exc, openai.APIStatusError) \
                        else type(exc).__name__
                answer.ended = time.monotonic()
                answers.append(answer)

    await asyncio.gather(*(client_loop() for _ in range(clients)))


def cpu_split(app: ApplianceProcess, replicas: int) -> dict[str, float]:
    """CPU seconds so far of the engines (every replica with its processes), the gateway, and this
    process (the load generator)."""
    engines = ["engine"] + [f"engine:{BASE_MODEL}-{n}" for n in range(1, replicas)]
    return {"engines": sum(family_cpu_seconds(app.pid(e)) for e in engines),
            "gateway": family_cpu_seconds(app.pid("gateway")), "client": time.process_time()}


def measure(app: ApplianceProcess, replicas: int, key: str, clients: int, seconds: float, warm: float) -> dict:
    """Answers per second, latency and where the CPU went with `clients` requests in flight."""
    answers: list[Answer] = []
    start = time.monotonic()
    measure_from, before = start + warm, {}

    def sample() -> None:  # the CPU readings start once the warm-up ends
        time.sleep(warm)
        before.update(cpu_split(app, replicas), machine=busy_cpu())

    sampler = threading.Thread(target=sample)
    sampler.start()
    asyncio.run(load(app.url, key, clients, measure_from + seconds, answers))
    sampler.join()
    after, machine = cpu_split(app, replicas), busy_cpu()
    wall = time.monotonic() - measure_from
    counted = [a for a in answers if a.started >= measure_from]
    ok = [a for a in counted if a.error is None]
    span = max(a.ended for a in counted) - measure_from if counted else seconds
    latencies = [(a.ended - a.started) * 1000 for a in ok]
    used = {part: (after[part] - before[part]) / wall for part in after}
    return {"clients": clients, "answers": len(ok), "errors": len(counted) - len(ok), "per_s": len(ok) / span,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99), **used,
            "cpu": (machine[0] - before["machine"][0]) / (machine[1] - before["machine"][1]) * os.cpu_count()}


def answered_by(url: str, replica: str) -> float:
    text = httpx.get(f"{url}/metrics", headers=metrics_headers(url), timeout=5, trust_env=False).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("airlock_gateway_completion_seconds_count{") and f'engine="{replica}"' in line)


def failover(app: ApplianceProcess, key: str, clients: int, before: float, limit: float) -> dict:
    """kill -9 of replica 1 under load; the load goes on until the restarted replica answers again
    and 10 s more (at most `limit` seconds after the kill)."""
    replica, service = f"{BASE_MODEL}-1", f"engine:{BASE_MODEL}-1"
    answers: list[Answer] = []
    stop, marks = threading.Event(), {}

    def kill_and_watch() -> None:
        time.sleep(before)
        signal_family(app.pid(service), signal.SIGKILL)
        marks["kill"] = time.monotonic()
        time.sleep(1.0)  # what was on the replica has failed (or gone elsewhere) by now
        seen = answered_by(app.url, replica)
        while time.monotonic() - marks["kill"] < limit:
            time.sleep(0.25)
            try:
                if answered_by(app.url, replica) > seen:
                    marks.setdefault("back", time.monotonic())
            except httpx.HTTPError:
                pass
            if "back" in marks and time.monotonic() - marks["back"] > 10:
                break
        stop.set()

    killer = threading.Thread(target=kill_and_watch)
    killer.start()
    asyncio.run(load(app.url, key, clients, stop, answers))
    killer.join()
    kill, back = marks["kill"], marks.get("back")
    failed = [a for a in answers if a.error is not None]
    before_kill = [a.ended - a.started for a in answers if a.error is None and kill - 10 <= a.started and a.ended < kill]
    reference = median(before_kill)

    def settled(second: int) -> bool:
        """No failure ended in that second after the kill, and its answers' median is near the reference."""
        start = kill + second
        done = [a for a in answers if start <= a.ended < start + 1]
        ok = [a.ended - a.started for a in done if a.error is None]
        return bool(ok) and len(ok) == len(done) and median(ok) <= STEADY_WITHIN * reference

    last = int(max(a.ended for a in answers) - kill) - STEADY_SECONDS
    steady = next((second + 1 for second in range(max(last, 0)) if all(settled(second + n) for n in range(STEADY_SECONDS))),
                  None)
    timeline = []
    for t in [kill - 2 * TIMELINE_S + i * TIMELINE_S for i in range(int((max(a.ended for a in answers) - kill)
                                                                         / TIMELINE_S) + 2)]:
        done = [a for a in answers if t <= a.ended < t + TIMELINE_S]
        ok = [a.ended - a.started for a in done if a.error is None]
        timeline.append((t - kill, len(ok) / TIMELINE_S, median(ok) * 1000 if ok else None, len(done) - len(ok)))
    return {"failed": len(failed), "in_flight": sum(1 for a in failed if a.started < kill),
            "kinds": sorted({a.error for a in failed}),
            "last_failure_s": max((a.ended for a in failed), default=kill) - kill,
            "steady_s": steady, "back_s": (back - kill) if back else None, "before_p50_ms": reference * 1000,
            "answers": len(answers) - len(failed), "timeline": timeline}


def appliance(scratch: Path, replicas: int) -> tuple[ApplianceProcess, str]:
    settings = Settings(home=scratch / f"r{replicas}" / "home", models_dir=REPO_ROOT / "offline_models",
                        serve_base_model=BASE_MODEL, gateway_port=free_port(), store_backend="local",
                        engine_transport="uds", engines=engines(replicas))
    app = ApplianceProcess(settings)
    app.start()
    _, key = create_key(Airlock.open(settings).meta, "bench-replicas", role="inference", rpm=KEY_RPM, tpm=KEY_TPM,
                        actor="bench")
    return app, key


def run(quick: bool) -> Section:
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    seconds, warm = (10.0, 3.0) if quick else (40.0, 5.0)
    section = Section(
        title="16. Replicas: two against one, and failover",
        what=(f"`airlock up` with an engine list of `{BASE_MODEL}`: one replica on CPU core 0, or two on cores 0 and "
              f"1, each its own vLLM behind the gateway's pool. The official openai client (async, retries off) asks "
              f"the base model for {MAX_TOKENS} tokens (ignore_eos) with 16 and 64 requests always in flight: "
              f"{warm:g} s of warm-up, then {seconds:g} s measured. Failover: at 16 in flight, replica 1 is killed "
              "with SIGKILL (its whole process family) and the supervisor restarts it."))
    results: dict[int, list[dict]] = {}
    fail: dict = {}
    with tempfile.TemporaryDirectory(prefix="airlock-r-") as tmp:  # short: the sockets' paths must fit
        for replicas in (1, 2):
            app, key = appliance(Path(tmp), replicas)
            try:
                results[replicas] = [measure(app, replicas, key, clients, seconds, warm) for clients in CONCURRENCY]
                if replicas == 2:
                    fail = failover(app, key, 16, before=warm + (5 if quick else 15), limit=240)
            finally:
                app.stop()
    cores = os.cpu_count()
    for one, two in zip(results[1], results[2], strict=True):
        r = two["per_s"] / one["per_s"]
        section.add(f"throughput at {one['clients']} in flight", f"{one['per_s']:.1f}/s (1 replica)",
                    f"{two['per_s']:.1f}/s (2 replicas)", f"{r:.2f}x",
                    f">= {TARGET_RATIO}x where the cores allow", r >= TARGET_RATIO if cores >= 4 else None)
    rows = [[f"{n} replica" + ("s" if n > 1 else ""), m["clients"], m["answers"], m["errors"], f"{m['per_s']:.1f}",
             f"{m['p50_ms']:.0f}", f"{m['p99_ms']:.0f}", f"{m['cpu']:.2f} of {cores}", f"{m['engines']:.2f}",
             f"{m['gateway']:.2f}", f"{m['client']:.2f}"]
            for n, ms in results.items() for m in ms]
    section.details.append(("Throughput, latency and CPU (cores busy on average)",
                            ("configuration", "in flight", "answers", "errors", "answers/s", "p50 ms", "p99 ms",
                             "machine", "engines", "gateway", "load generator"), rows))
    section.add("failover: requests failed", "requests on the killed replica",
                f"{fail['failed']} ({fail['in_flight']} started before the kill)", "",
                "only those already on it", fail["failed"] == fail["in_flight"])
    steady = fail["steady_s"]
    section.details.append(("Failover (2 replicas, 16 in flight, kill -9 of replica 1)",
                            ("answers", "failed", "of them started before the kill", "kinds", "last failure after",
                             "latency steady after", "p50 before the kill", "replica answering again after"),
                            [[fail["answers"], fail["failed"], fail["in_flight"], ", ".join(fail["kinds"]) or "none",
                              f"{fail['last_failure_s']:.2f} s",
                              f"{steady:.2f} s" if steady is not None else "not within the run",
                              f"{fail['before_p50_ms']:.0f} ms",
                              f"{fail['back_s']:.1f} s" if fail["back_s"] else "not within the run"]]))
    section.details.append(("Failover timeline (5 s steps; 0 is the kill)",
                            ("from (s)", "answers/s", "p50 ms", "failed"),
                            [[f"{t:+.0f}", f"{rate:.1f}", f"{p50:.0f}" if p50 is not None else "", bad]
                             for t, rate, p50, bad in fail["timeline"]]))
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    if cores < 4:
        section.notes.append(f"This machine has {cores} cores: the replicas, the gateway and the load generator share "
                             "them, so the CPU column, not the engines, is the limit; the 1.6x target is not judged.")
    return section
