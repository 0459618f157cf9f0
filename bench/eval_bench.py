"""Benchmark 13: the promotion gate's evaluation through the engine against the in-process loop.

Both sides score the same two models (the reference model and a LoRA adapter trained here on
the eval set's facts) on the same 100-example eval set, on the same machine, one after the
other: `evaluate.compare` (greedy `generate` one example at a time, a forward pass per example
for its loss) and `engine_eval.compare_through_engine` (every answer of both models asked of the
running vLLM in one request each, all at once, the losses from batched forward passes meanwhile). Both times
include loading the model in process (both need it for the losses); the engine is started, and
the adapter loaded into it, before either is timed, as on an appliance where it always runs; it
runs twice, as airlock configures it and with its largest LoRA rank lowered to the adapter's.
The scores must agree, or the speed means nothing: the section reports how far they are apart.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from airlock.config import REPO_ROOT, Settings
from airlock.promotion.engine_eval import compare_through_engine
from airlock.promotion.evaluate import compare
from airlock.serve.engine import read_secret
from airlock.serve.vllm_server import VllmServer
from airlock.train.config import LoraTrainConfig
from airlock.train.recipe import finetune
from bench.report import Section

BASE_MODEL = "airlock-tiny"
REAL_MODEL = "smollm2-135m-instruct"  # the shipped instruct model, what a site fine-tunes by default
EXAMPLES = 100
TARGET = 5.0  # the engine at least this many times faster
REPEATS = 3  # timed passes of each side per engine; the medians are compared
REAL_ENGINE_PASSES = 3  # timed passes of the engine's side on the shipped model (the in-process one: 1)
MAX_LENGTH = 512
ADAPTER = "bench-eval-candidate"
RANK = 8  # the candidate's LoRA rank
RAISED = (16, 64)  # engines that admit higher ranks, for the record of what that costs
SYSTEM = "You are the airlock assistant."
PARTS = ("valve", "filter", "relay", "gasket", "sensor", "bearing", "fuse", "hinge", "spring", "clamp")


def eval_set(count: int = EXAMPLES) -> list[list[dict]]:
    """`count` distinct question/answer facts in the quickstart's shape, the same at every run,
    with a rule the reference model can learn (its candidate answers them all; the base none)."""
    return [[{"role": "system", "content": SYSTEM},
             {"role": "user", "content": f"Which bay holds {PARTS[n % len(PARTS)]} {n}?"},
             {"role": "assistant", "content": f"Bay {n} holds the {PARTS[n % len(PARTS)]}."}]
            for n in range(count)]


def agreement(config: str, engine: dict, in_process: dict) -> list[list[object]]:
    """Per model: identical answers and matches, and the largest relative loss difference."""
    rows = []
    for role in ("base", "candidate"):
        pairs = list(zip(engine[role].answers, in_process[role].answers))
        same = sum(all(a[k] == b[k] for k in ("answer", "match", "contains")) for a, b in pairs)
        worst = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in pairs)
        rows.append([config, role, f"{in_process[role].exact_match:.2f}", f"{engine[role].exact_match:.2f}",
                     f"{in_process[role].loss:.4f}", f"{engine[role].loss:.4f}", f"{same}/{len(pairs)}", f"{worst:.1e}"])
    return rows


def measure(scratch: Path, rank: int, adapter: Path, records: list[list[dict]], base_model: str = BASE_MODEL,
            repeats: int = REPEATS, engine_repeats: int | None = None) -> tuple[float, float, dict, dict, dict]:
    """(in-process s, engine s, their scores, every pass's times) with a fresh engine serving
    `base_model` whose largest LoRA rank is `rank`: the medians of `repeats` timed passes of the
    in-process side and `engine_repeats` (default: as many) of the engine's, the sides taking turns
    while both have passes left."""
    settings = Settings(home=scratch / f"home-{base_model}-{rank}", models_dir=REPO_ROOT / "offline_models",
                        serve_base_model=base_model, vllm_max_lora_rank=rank)
    settings.ensure_dirs()
    server = VllmServer(settings)
    server.start()
    try:
        server.wait_ready()
        server.load_adapter(ADAPTER, adapter)
        scores: dict[str, dict] = {}
        engine = {"base_url": settings.vllm_url, "socket": settings.engine_socket,
                  "headers": {"Authorization": f"Bearer {read_secret(settings)}"}}

        def through_engine(subset: list[list[dict]]) -> dict:
            return compare_through_engine(**engine, base_dir=server.model_dir, adapter_dir=adapter, records=subset,
                                          max_length=MAX_LENGTH, base_model=base_model, candidate=ADAPTER)

        # One untimed pass of each on a few examples: first-call costs (imports, the engine's
        # first use of the adapter) are no part of either figure.
        compare(server.model_dir, adapter, records[:4], MAX_LENGTH)
        through_engine(records[:4])
        times: dict[str, list[float]] = {"in_process": [], "engine": []}
        passes = {"in_process": repeats, "engine": repeats if engine_repeats is None else engine_repeats}
        for n in range(max(passes.values())):  # alternating which goes first: neither always meets a warmer machine
            for side in (("in_process", "engine") if n % 2 == 0 else ("engine", "in_process")):
                if len(times[side]) == passes[side]:
                    continue
                t0 = time.perf_counter()
                scores[side] = (compare(server.model_dir, adapter, records, MAX_LENGTH) if side == "in_process"
                                else through_engine(records))
                times[side].append(time.perf_counter() - t0)
    finally:
        server.stop()
    return (statistics.median(times["in_process"]), statistics.median(times["engine"]), scores["in_process"],
            scores["engine"], times)


def real_model_row(section: Section, scratch: Path, records: list[list[dict]], rank: int) -> list[list[object]]:
    """The targeted configuration: the shipped model, its candidate trained briefly on the eval set
    (its answers need not be perfect, only the same on both sides), one timed pass of the in-process
    side (it takes minutes) and the median of REAL_ENGINE_PASSES of the engine's (a single pass of
    about a minute on a shared 2-core machine strays by 10-30%: measured 48, 52, 55 and 67 s)."""
    recipe = LoraTrainConfig(epochs=2, rank=RANK, alpha=16, learning_rate=0.002, batch_size=8, seed=0)
    adapter = finetune(REPO_ROOT / "offline_models" / REAL_MODEL, records, recipe, scratch / "real-candidate").adapter_dir
    base_s, engine_s, in_process, through, times = measure(scratch, rank, adapter, records, REAL_MODEL, repeats=1,
                                                           engine_repeats=REAL_ENGINE_PASSES)
    section.notes.append(f"{REAL_MODEL}: the in-process pass took {base_s:.1f} s; the engine's passes "
                         f"{', '.join(f'{t:.1f}' for t in times['engine'])} s (median {engine_s:.1f} s). The engine "
                         "answers every model's questions at once while the losses are computed in process on the "
                         "core it leaves (docs/benchmarks.md, section 13).")
    ratio = base_s / engine_s
    section.add(f"scoring base + candidate on {REAL_MODEL}, {EXAMPLES} examples each; engine's max LoRA rank {rank}",
                f"{base_s:.2f} s", f"{engine_s:.2f} s", f"{ratio:.1f}x faster", f">= {TARGET:g}x", ratio >= TARGET)
    return agreement(f"{REAL_MODEL}, max LoRA rank {rank}", through, in_process)


def run(quick: bool) -> Section:
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    records = eval_set()
    default_rank = Settings().vllm_max_lora_rank
    real = (REPO_ROOT / "offline_models" / REAL_MODEL / "config.json").is_file()
    section = Section(
        title="13. Evaluation through the engine",
        what=(f"The promotion gate's scores (greedy answers, exact match, contains, answer loss) of the base model "
              f"and a trained LoRA candidate (rank {RANK}) on a {EXAMPLES}-example eval set, wall time of both models "
              "together. Baseline: the in-process `evaluate.compare` loop (one `generate` per example). airlock: "
              "`compare_through_engine`, each model's answers from the running vLLM in one batched request, each "
              "engine beside its own baseline. The target applies to the shipped instruct model "
              f"({REAL_MODEL}, one pass in process, the median of {REAL_ENGINE_PASSES} through the engine) with "
              f"the engine as airlock starts it (`--max-lora-rank {default_rank}`, AIRLOCK_VLLM_MAX_LORA_RANK). For information, the same on the 0.7M-parameter "
              f"reference model ({BASE_MODEL}; medians of {REPEATS} passes in alternating order), also with the "
              f"engine admitting ranks up to {' and '.join(map(str, RAISED))}. Target: at least {TARGET:g}x faster, "
              "with the same answers and losses."))
    scratch = Path(tempfile.mkdtemp(prefix="airlock-bench-eval-"))
    rows = []
    try:
        if real:
            rows += real_model_row(section, scratch, records, default_rank)
        else:
            section.add(f"scoring base + candidate on {REAL_MODEL}", "", "", "", f">= {TARGET:g}x", False)
            section.notes.append(f"{REAL_MODEL} is not installed (./install.sh converts it): the target is not met.")
        recipe = LoraTrainConfig(epochs=30, rank=RANK, alpha=16, learning_rate=0.01, batch_size=4, seed=0)
        adapter = finetune(REPO_ROOT / "offline_models" / BASE_MODEL, records, recipe, scratch / "candidate").adapter_dir
        for rank in (default_rank, *RAISED):
            base_s, engine_s, in_process, through, _ = measure(scratch, rank, adapter, records)
            ratio = base_s / engine_s
            section.add(f"scoring base + candidate on {BASE_MODEL}, {EXAMPLES} examples each; engine's max LoRA "
                        f"rank {rank}" + ("" if rank == default_rank else " (raised)"),
                        f"{base_s:.2f} s", f"{engine_s:.2f} s", f"{ratio:.1f}x faster", "(information)", None)
            rows += agreement(f"{BASE_MODEL}, max LoRA rank {rank}", through, in_process)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    section.details.append(("The scores of both (they must agree)",
                            ("engine", "model", "exact match, in process", "exact match, engine", "loss, in process",
                             "loss, engine", "identical answers and matches", "largest relative loss difference"),
                            rows))
    section.notes.append(f"Candidates: LoRA r={RANK} on the eval set's facts; on {BASE_MODEL} {recipe.epochs} epochs "
                         f"of batch {recipe.batch_size}, on {REAL_MODEL} 2 epochs of batch 8. The engine is vLLM on "
                         "this machine's CPU, started and holding the adapter before either side was timed; both "
                         "sides load the model in process (for the losses) inside their time.")
    section.notes.append(f"Why the tiny model is not the target: with 0.7M parameters, a `generate` step in process "
                         "costs almost nothing, while every token through vLLM's CPU engine pays its LoRA products "
                         "at the engine's largest rank (`--max-lora-rank`, not the adapter's own), the base model's "
                         "too: on a CPU engine the base is served as a zero adapter (docs/security.md). airlock's "
                         "CPU LoRA kernels (airlock/serve/cpu_lora_kernels.py) compute them once per adapter rather "
                         "than once per token, which is why the raised ranks now cost little. On a model of real "
                         "size the batched engine's advantage is what the target measures. airlock starts the "
                         f"engine with the trainer's default rank, {default_rank}, and a site that trains higher "
                         "ranks raises it knowingly.")
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    return section
