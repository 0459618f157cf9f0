"""Benchmark 4: the hand-off, from the gate's pass to the first token served under the alias.

Two candidates are trained and evaluated by the quickstart workflow (its finetune and evaluate
stages, through `submit()` and the worker) while vLLM boots. Each repetition then passes one of
them through the workflow's gate (`check_candidate()`) and starts the clock when it returns:
`propose()` to the alias, unprotected as the quickstart's (verify again, materialise, hot-load
into vLLM, smoke test under the staging name, the signed promotion record, alias switch), then a
streamed chat completion through the gateway under the alias until its first token. The candidates take turns, so each
deploy replaces the adapter serving the alias, as a new release does; a candidate is unloaded
from vLLM before its turn, so every repetition pays a real load.

The baseline is the same streamed request once the adapter is loaded and warm: the ratio shows
what the hand-off costs over a request that needed none.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from airlock.config import REPO_ROOT
from airlock.context import Airlock
from bench.report import Section
from bench.serving import Stack
from bench.stats import median, ratio

TARGET_S = 2.0
ALIAS = "bench-assistant"
SEEDS = (0, 11)
PARTS = ("verify", "materialize", "load", "smoke", "checks", "switch", "first token")
QUICKSTART = REPO_ROOT / "examples" / "quickstart.yaml"
QUESTION = [{"role": "system", "content": "You are the airlock assistant."},
            {"role": "user", "content": "What port does the airlock gateway listen on?"}]


def candidate_workflow(folder: Path) -> Path:
    """The quickstart without its promote and serve stages (the benchmark does those), with
    absolute paths so it can be written anywhere."""
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec["dataset"] = str(QUICKSTART.parent / spec["dataset"])
    spec["stages"] = [s for s in spec["stages"] if s["uses"] in ("finetune.lora", "evaluate.compare")]
    for stage in spec["stages"]:
        if "eval_set" in stage.get("with", {}):
            stage["with"]["eval_set"] = str(QUICKSTART.parent / stage["with"]["eval_set"])
    path = folder / "candidate.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def train_candidates(airlock: Airlock, seeds: tuple[int, ...] = SEEDS) -> list[str]:
    """Train and evaluate (and so sign) one candidate per seed; returns their model ids."""
    from airlock.workflow.runs import get_run
    from airlock.workflow.submit import submit
    from airlock.workflow.worker import Worker

    workflow = candidate_workflow(airlock.settings.home)
    ids = []
    for seed in seeds:
        run_id = submit(airlock, workflow, [f"finetune.seed={seed}"], actor="bench")["run_id"]
        if Worker(airlock).run_one(run_id) != "succeeded":
            raise RuntimeError(f"candidate run {run_id} failed: {get_run(airlock, run_id)['error']}")
        ids.append(get_run(airlock, run_id)["stages"][0]["outputs"]["model_id"])
    return ids


@contextmanager
def timed_parts() -> Iterator[dict[str, float]]:
    """Time the steps `propose()` takes by wrapping the functions it calls, for one call.

    `propose()` itself runs unchanged; what it spends outside these (the request, the signed
    record, the alias rows and the audit entries) is the switch. The engine calls are wrapped on
    the client class it reaches the locked engine through.
    """
    import airlock.serve.serving_copy as serving_copy
    from airlock.serve.engine import EngineClient

    parts: dict[str, float] = defaultdict(float)
    wrapped = [(serving_copy, "verify_model", "verify"), (serving_copy, "materialize", "materialize"),
               (EngineClient, "load_adapter", "load"), (EngineClient, "smoke_test", "smoke"),
               (EngineClient, "is_healthy", "checks"), (EngineClient, "loaded_adapters", "checks")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in wrapped]

    def timing(real, label):
        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                parts[label] += time.perf_counter() - started
        return call

    for (owner, name, label), (_, _, real) in zip(wrapped, originals, strict=True):
        setattr(owner, name, timing(real, label))
    try:
        yield parts
    finally:
        for owner, name, real in originals:
            setattr(owner, name, real)


def first_token(client: httpx.Client) -> tuple[float, str]:
    """Seconds from sending a streamed request under the alias to its first text delta, and
    the adapter that answered (the gateway's x-airlock-adapter header). The rest of the stream is read, untimed, so the
    connection is reused."""
    body = {"model": ALIAS, "messages": QUESTION, "max_tokens": 16, "temperature": 0, "stream": True}
    started = time.perf_counter()
    seconds, model = None, ""
    with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code} through the alias: {resp.read()[:300]!r}")
        for line in resp.iter_lines():
            if seconds is None and line.startswith("data:") and line.strip() != "data: [DONE]":
                event = json.loads(line[5:])
                if any((c.get("delta") or {}).get("content") for c in event.get("choices") or []):
                    seconds, model = time.perf_counter() - started, resp.headers.get("x-airlock-adapter", "")
    if seconds is None:
        raise RuntimeError("the stream under the alias carried no text")
    return seconds, model


def one_handoff(stack: Stack, client: httpx.Client, model_id: str) -> dict[str, float]:
    from airlock.access.holders import OPERATOR
    from airlock.promotion.gate import GatePolicy, check_candidate
    from airlock.promotion.policy import set_policy
    from airlock.workflow.gatekeeper import propose

    settings = stack.airlock.settings
    set_policy(stack.airlock, ALIAS, {"approvals": 0}, actor="bench", holder=OPERATOR)  # the quickstart's
    if model_id in stack.vllm.loaded_adapters():
        stack.vllm.unload_adapter(model_id)  # untimed: this turn must pay a real load
    started = time.perf_counter()
    check_candidate(stack.airlock, model_id, GatePolicy(min_exact_match=0.9), actor="bench")
    passed = time.perf_counter()  # the clock starts when the workflow's gate has passed
    with timed_parts() as parts:
        propose(stack.airlock, model_id=model_id, alias=ALIAS, run_id=None,
                base_path=settings.models_dir / settings.serve_base_model, actor="bench")
    deployed = time.perf_counter()
    parts = dict(parts)
    parts["switch"] = (deployed - passed) - sum(parts.values())
    parts["first token"], answered_by = first_token(client)
    if answered_by != model_id:
        raise RuntimeError(f"the first request after the switch was answered by {answered_by}, not {model_id}")
    # The clock stops at the first token; first_token() reads the rest of the stream afterwards.
    parts["total"] = (deployed - passed) + parts["first token"]
    parts["promote"] = passed - started
    return parts


def run(stack: Stack, quick: bool) -> Section:
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    reps, warm_per_rep = (4, 3) if quick else (8, 5)
    candidates: list[str] = stack.prepared
    section = Section(
        title="4. Hand-off: gate pass to first token under the alias",
        what=("From the workflow's gate (`check_candidate()`) returning to the first streamed token through the "
              "gateway under the alias: `propose()` to an unprotected alias (verify the signed manifest and every "
              "file again, materialise the files, hot-load into vLLM, smoke test, the request and its signed "
              "promotion record, switch the alias), then the first request. Baseline: the same streamed "
              f"request once the adapter is loaded and warm. {reps} hand-offs, two candidates taking turns, each "
              f"unloaded from vLLM before its turn; {warm_per_rep} warm requests after each. The ratio is hand-off "
              "total / warm first token."))
    runs, warm = [], []
    with httpx.Client(base_url=stack.gateway.url, headers=stack.headers, trust_env=False, timeout=120) as client:
        client.get("/healthz")  # open the connection before the clock ever runs
        for i in range(reps):
            model_id = candidates[i % len(candidates)]
            runs.append(one_handoff(stack, client, model_id) | {"model": model_id})
            warm += [first_token(client)[0] for _ in range(warm_per_rep)]

    totals = [r["total"] for r in runs]
    warm_ms, total_ms, worst_ms = 1000 * median(warm), 1000 * median(totals), 1000 * max(totals)
    section.add(f"gate pass to first token, median of {reps}", f"{warm_ms:.1f} ms", f"{total_ms:.0f} ms",
                f"{ratio(total_ms, warm_ms):.1f}", f"< {TARGET_S:.0f} s", total_ms < TARGET_S * 1000)
    section.add(f"gate pass to first token, slowest of {reps}", f"{warm_ms:.1f} ms", f"{worst_ms:.0f} ms",
                f"{ratio(worst_ms, warm_ms):.1f}", f"< {TARGET_S:.0f} s", worst_ms < TARGET_S * 1000)

    labels = {"verify": "verify again (signature, every file digest)", "materialize": "materialise files for vLLM",
              "load": "hot-load into vLLM", "smoke": "smoke test", "checks": "vLLM health and adapter list",
              "switch": "request, signed record, alias switch, audit, database reads", "first token": "first token through the gateway",
              "total": "total"}
    part_rows = []
    for part in (*PARTS, "total"):
        values = [1000 * r[part] for r in runs]
        part_rows.append([labels[part], f"{median(values):.1f}", f"{min(values):.1f}", f"{max(values):.1f}",
                          f"{100 * median(values) / total_ms:.0f}%"])
    section.details.append(("Where the hand-off's time goes (ms)", ("part", "median", "min", "max", "share of median total"),
                            part_rows))
    section.details.append(("Each hand-off (ms)", ("#", "adapter", "promote (before the clock)", *PARTS, "total"),
                            [[n + 1, r["model"], *(f"{1000 * r[p]:.1f}" for p in ("promote", *PARTS, "total"))]
                             for n, r in enumerate(runs)]))
    section.notes += [
        f"Warm first token: median of {len(warm)} requests, {1000 * min(warm):.1f}-{1000 * max(warm):.1f} ms.",
        "Every first request after a switch was answered by the adapter just deployed (checked on the "
        "gateway's `x-airlock-adapter` response header).",
        "The vLLM health and adapter-list checks, the load and the smoke test are HTTP calls from the "
        "deploying process to vLLM; the smoke test generates 4 tokens through the new adapter before the "
        "switch, so the first request after the switch never meets a cold adapter.",
    ]
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    return section
