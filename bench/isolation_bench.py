"""Benchmark 5: chat latency through the gateway while the worker fine-tunes, against idle.

The appliance runs as an operator runs it (`python -m airlock up`: engine on its private Unix
socket, worker, gateway, each its own process), with the worker confined by its settings
(`worker_threads`, `worker_nice`). A fine-tune is queued with `airlock workflow run` (the
quickstart's finetune stage with many more epochs, so it outlasts the measurement), and wrk sends
chat completions through the gateway.

Idle and training alternate in short runs: for an idle run the worker and its training job (a
process of its own) are paused (SIGSTOP, mid-training: they use no CPU at all), for a training run
they continue (SIGCONT). Both kinds of run therefore see the same machine at nearly the same time. The ratio is training /
idle, for p50 and p99.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from airlock.access.keys import create_key
from airlock.config import REPO_ROOT, Settings
from airlock.context import Airlock
from bench.procs import (ApplianceProcess, family_cpu_seconds, free_port, gateway_trouble, proc_status,
                         settings_env, signal_family)
from bench.report import Section
from bench.stats import Latency, ratio
from bench.wrk import WrkResult, lua_script, run_wrk, wrk_path

TARGET_RATIO = 1.5
WORKER_THREADS, WORKER_NICE = 1, 10
EPOCHS = 1000  # the most LoraTrainConfig allows: 8,000 steps of the quickstart per run
RUNS = 3  # queued back to back (different seeds), so training never runs out mid-measurement
BASE_MODEL = "airlock-tiny"
QUICKSTART = REPO_ROOT / "examples" / "quickstart.yaml"
MESSAGES = [{"role": "user", "content": "Say hello to the operator."}]
PHASES = ("idle", "training")
MAX_FAILED = 0.01  # a few failed requests are reported; more stop the benchmark


@dataclass
class Plan:
    stream: bool
    seconds: int
    rounds: int
    runs: dict[str, list[tuple[WrkResult, int, float]]] = field(default_factory=lambda: {p: [] for p in PHASES})

    @property
    def label(self) -> str:
        return f"1 client, {'streaming' if self.stream else 'non-streaming'}"

    def latency(self, phase: str) -> Latency:
        return Latency.of([x for r, _, _ in self.runs[phase] for x in r.latencies_ms()])


def training_workflow(folder: Path) -> Path:
    """The quickstart's finetune stage alone (nothing is evaluated, promoted or served
    afterwards), with absolute paths so it can be written anywhere."""
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec["name"] = "bench-isolation"
    spec["dataset"] = str(QUICKSTART.parent / spec["dataset"])
    spec["stages"] = [s for s in spec["stages"] if s["uses"] == "finetune.lora"]
    path = folder / "training.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def queue_training(settings: Settings, workflow: Path, seed: int) -> str:
    """`airlock workflow run` against the running appliance; its worker claims the run."""
    out = subprocess.run([sys.executable, "-m", "airlock", "workflow", "run", str(workflow), "--json",
                          "--set", f"finetune.epochs={EPOCHS}", "--set", f"finetune.seed={seed}"],
                         env=settings_env(settings), capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"airlock workflow run exited {out.returncode}: {out.stdout[-1000:]} {out.stderr[-2000:]}")
    return json.loads(out.stdout[out.stdout.index("{"):])["run_id"]


class Training:
    """The queued runs' progress, read from the appliance's database."""

    def __init__(self, airlock: Airlock, run_ids: list[str]) -> None:
        self.airlock, self.run_ids = airlock, run_ids

    def steps(self) -> int:
        rows = self.airlock.meta.query(
            f"SELECT progress_json FROM stages WHERE run_id IN ({','.join('?' * len(self.run_ids))})", self.run_ids)
        return sum((json.loads(r["progress_json"] or "{}") or {}).get("step", 0) for r in rows)

    def statuses(self) -> list[str]:
        return [self.airlock.meta.one("SELECT status FROM runs WHERE id = ?", (r,))["status"] for r in self.run_ids]

    def wait_started(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.steps() == 0:
            failed = [s for s in self.statuses() if s in ("failed", "interrupted", "cancelled")]
            if failed or time.monotonic() > deadline:
                raise RuntimeError(f"the fine-tune did not start training (runs: {self.statuses()})")
            time.sleep(0.5)


def chat_script(folder: Path, key: str, stream: bool) -> Path:
    body = json.dumps({"model": BASE_MODEL, "messages": MESSAGES, "max_tokens": 8, "temperature": 0,
                       "ignore_eos": True, "stream": stream})
    path = folder / f"chat-{stream}.lua"
    path.write_text(lua_script("POST", {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                               body, histogram=True))
    return path


def run(quick: bool) -> Section:
    wrk_path()
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    seconds, rounds = (3, 3) if quick else (5, 6)
    plans = [Plan(stream=s, seconds=seconds, rounds=rounds) for s in (False, True)]
    section = Section(
        title="5. Serving beside a fine-tune",
        what=("Chat completions through the gateway (wrk, one client, max_tokens 8, temperature 0) while the worker "
              "fine-tunes, against idle, on the appliance as `airlock up` runs it (engine on its Unix socket, worker "
              f"and gateway each their own process). The worker is confined by its settings: worker_threads "
              f"{WORKER_THREADS}, worker_nice {WORKER_NICE}. The fine-tune is the quickstart's finetune stage with "
              f"epochs {EPOCHS}, queued with `airlock workflow run`. Idle and training runs of {seconds} s alternate "
              f"({rounds} of each per configuration): for an idle run the worker is paused (SIGSTOP), for a training "
              "run it continues. The ratio is training / idle; lower is better."))
    quiet: dict[str, Latency] = {}
    worker_state = ""
    with tempfile.TemporaryDirectory(prefix="airlock-bench-iso-") as tmp:
        scratch = Path(tmp)
        settings = Settings(home=scratch / "home", models_dir=REPO_ROOT / "offline_models", serve_base_model=BASE_MODEL,
                            gateway_port=free_port(), store_backend="local", engine_transport="uds",
                            worker_threads=WORKER_THREADS, worker_nice=WORKER_NICE)
        app = ApplianceProcess(settings)
        worker, paused = 0, False
        try:
            app.start()
            airlock = Airlock.open(settings)
            _, key = create_key(airlock.meta, "bench-isolation", role="inference", actor="bench")
            scripts = {p.stream: chat_script(scratch, key, p.stream) for p in plans}
            url = f"{app.url}/v1/chat/completions"
            for plan in plans:  # warm, then a reference with nothing queued at all
                run_wrk(url, scripts[plan.stream], connections=1, seconds=2)
                quiet[plan.label] = Latency.of(run_wrk(url, scripts[plan.stream], connections=1,
                                                       seconds=2 * seconds).latencies_ms())
            workflow = training_workflow(scratch)
            training = Training(airlock, [queue_training(settings, workflow, seed) for seed in range(RUNS)])
            training.wait_started()
            worker = app.pid("worker")
            status = proc_status(worker)
            worker_state = f"nice {status['nice']}, {status['threads']} OS threads"
            for plan in plans:
                for r in range(plan.rounds):
                    for phase in (PHASES if r % 2 == 0 else PHASES[::-1]):
                        # The worker and its training job (a child process of its own) together.
                        signal_family(worker, signal.SIGSTOP if phase == "idle" else signal.SIGCONT)
                        paused = phase == "idle"
                        time.sleep(0.5)  # a resumed worker gets back into its step first
                        steps0, cpu0 = training.steps(), family_cpu_seconds(worker)
                        result = run_wrk(url, scripts[plan.stream], connections=1, seconds=plan.seconds)
                        if not result.requests or result.failed > MAX_FAILED * result.requests:
                            raise RuntimeError(f"{plan.label}, {phase}: {result.failed} of {result.requests} requests "
                                               f"failed; the gateway reports: {gateway_trouble(app.url) or 'nothing'}")
                        plan.runs[phase].append((result, training.steps() - steps0, family_cpu_seconds(worker) - cpu0))
            signal_family(worker, signal.SIGCONT)
            paused = False
            statuses = training.statuses()
            trouble = gateway_trouble(app.url)
        finally:
            if worker and paused:
                signal_family(worker, signal.SIGCONT)
            app.stop()

    trained = [steps for p in plans for _, steps, _ in p.runs["training"]]
    if min(trained) <= 0:
        raise RuntimeError(f"training made no progress in some training runs (steps per run: {trained})")
    rows = []
    for plan in plans:
        idle, busy = plan.latency("idle"), plan.latency("training")
        for q in ("p50", "p99"):
            r = ratio(busy.get(q), idle.get(q))
            section.add(f"{q} latency, {plan.label}", f"{idle.get(q):.1f} ms (idle)", f"{busy.get(q):.1f} ms (training)",
                        f"{r:.2f}x", f"<= {TARGET_RATIO}x", r <= TARGET_RATIO)
        q = quiet[plan.label]
        rows.append([plan.label, "idle, nothing queued yet (reference)", q.n, f"{q.p50_ms:.1f}", f"{q.p99_ms:.1f}",
                     f"{q.mean_ms:.1f}", "", ""])
        for phase in PHASES:
            lat, runs = plan.latency(phase), plan.runs[phase]
            wall = sum(res.seconds for res, _, _ in runs)
            rows.append([plan.label, "idle (worker paused mid-run)" if phase == "idle" else "training",
                         lat.n, f"{lat.p50_ms:.1f}", f"{lat.p99_ms:.1f}", f"{lat.mean_ms:.1f}",
                         f"{sum(c for _, _, c in runs) / wall:.2f}", f"{sum(s for _, s, _ in runs) / wall:.1f}"])
    section.details.append(("Latency (ms), the worker's CPU and training progress",
                            ("configuration", "phase", "requests", "p50", "p99", "mean", "worker CPU (cores)",
                             "training steps/s"), rows))
    section.notes += [
        f"Confinement: `worker_threads={WORKER_THREADS}` sets the worker's OMP/MKL/OpenBLAS threads (torch's "
        f"intra-op pool), `worker_nice={WORKER_NICE}` lowers its priority below the engine and the gateway "
        f"(both at nice 0); no CPU pinning. Read from /proc during the run: worker {worker_state}.",
        "The reference rows were taken before anything was queued, minutes before the paused-worker idle runs; "
        "p50 reference against p50 paused: " + "; ".join(
            f"{p.label} {quiet[p.label].p50_ms:.1f} against {p.latency('idle').p50_ms:.1f} ms" for p in plans) + ".",
        f"Training progressed in every training run (checked; steps per second in the table); the queued runs' "
        f"states at the end: {', '.join(statuses)} (running or queued: training outlasted the measurement).",
        "Load generator: wrk (one connection), latency to the last byte, its coordinated-omission correction "
        "removed (bench/wrk.py).",
    ]
    failed = sum(r.failed for p in plans for runs in p.runs.values() for r, _, _ in runs)
    if failed or trouble:
        section.notes.append(f"{failed} requests failed (not 2xx); the gateway's own count: {trouble or 'nothing'}.")
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    return section
