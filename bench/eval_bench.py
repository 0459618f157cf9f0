"""Benchmark 13: the promotion gate's evaluation through the engine against the in-process loop.

Both sides score the same two models (the reference model and a LoRA adapter trained here on
the eval set's facts) on the same 100-example eval set, on the same machine, one after the
other: `evaluate.compare` (greedy `generate` one example at a time, a forward pass per example
for its loss) and `engine_eval.compare_through_engine` (every answer of both models asked of the
running vLLM in one request each, losses from batched forward passes meanwhile). Both times
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
EXAMPLES = 100
TARGET = 5.0  # the engine at least this many times faster
REPEATS = 3  # timed passes of each side per engine; the medians are compared
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


def measure(scratch: Path, rank: int, adapter: Path, records: list[list[dict]]) -> tuple[float, float, dict, dict]:
    """(in-process s, engine s, their scores) with a fresh engine whose largest LoRA rank is `rank`:
    the medians of REPEATS timed passes of each side."""
    settings = Settings(home=scratch / f"home-{rank}", models_dir=REPO_ROOT / "offline_models",
                        serve_base_model=BASE_MODEL, vllm_max_lora_rank=rank)
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
                                          max_length=MAX_LENGTH, base_model=BASE_MODEL, candidate=ADAPTER)

        # One untimed pass of each on a few examples: first-call costs (imports, the engine's
        # first use of the adapter) are no part of either figure.
        compare(server.model_dir, adapter, records[:4], MAX_LENGTH)
        through_engine(records[:4])
        times: dict[str, list[float]] = {"in_process": [], "engine": []}
        for n in range(REPEATS):  # alternating which goes first, so neither always meets a warmer machine
            for side in (("in_process", "engine") if n % 2 == 0 else ("engine", "in_process")):
                t0 = time.perf_counter()
                scores[side] = (compare(server.model_dir, adapter, records, MAX_LENGTH) if side == "in_process"
                                else through_engine(records))
                times[side].append(time.perf_counter() - t0)
    finally:
        server.stop()
    return statistics.median(times["in_process"]), statistics.median(times["engine"]), scores["in_process"], scores["engine"]


def run(quick: bool) -> Section:
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    records = eval_set()
    default_rank = Settings().vllm_max_lora_rank
    section = Section(
        title="13. Evaluation through the engine",
        what=(f"The promotion gate's scores (greedy answers, exact match, contains, answer loss) of the base model "
              f"and a trained LoRA candidate (rank {RANK}) on {BASE_MODEL}, on a {EXAMPLES}-example eval set, wall "
              "time of both models together. Baseline: the in-process `evaluate.compare` loop (one `generate` per "
              "example). airlock: `compare_through_engine`, each model's answers from the running vLLM in one "
              f"batched request. Measured with each engine beside its own baseline: with the engine as airlock "
              f"starts it (`--max-lora-rank {default_rank}`, AIRLOCK_VLLM_MAX_LORA_RANK), which the target "
              f"applies to, and, for information, with the engine admitting adapters up to ranks {' and '.join(map(str, RAISED))}. "
              f"Each figure is the median of {REPEATS} passes, in alternating order. Target: at least {TARGET:g}x "
              "faster, with the same answers and losses."))
    scratch = Path(tempfile.mkdtemp(prefix="airlock-bench-eval-"))
    rows = []
    try:
        recipe = LoraTrainConfig(epochs=30, rank=RANK, alpha=16, learning_rate=0.01, batch_size=4, seed=0)
        adapter = finetune(REPO_ROOT / "offline_models" / BASE_MODEL, records, recipe, scratch / "candidate").adapter_dir
        for rank in (default_rank, *RAISED):
            base_s, engine_s, in_process, through = measure(scratch, rank, adapter, records)
            ratio, targeted = base_s / engine_s, rank == default_rank
            section.add(f"scoring base + candidate, {EXAMPLES} examples each; engine's max LoRA rank {rank}"
                        + ("" if targeted else " (raised)"),
                        f"{base_s:.2f} s", f"{engine_s:.2f} s", f"{ratio:.1f}x faster",
                        f">= {TARGET:g}x" if targeted else "(information)", ratio >= TARGET if targeted else None)
            rows += agreement(f"max LoRA rank {rank}", through, in_process)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    section.details.append(("The scores of both (they must agree)",
                            ("engine", "model", "exact match, in process", "exact match, engine", "loss, in process",
                             "loss, engine", "identical answers and matches", "largest relative loss difference"),
                            rows))
    section.notes.append(f"Candidate: LoRA r={RANK} on the eval set's facts, {recipe.epochs} epochs of batch "
                         f"{recipe.batch_size}. The engine is vLLM on this machine's CPU, started and holding the "
                         "adapter before either side was timed; both sides load the model in process (for the "
                         "losses) inside their time.")
    section.notes.append("vLLM's CPU LoRA kernels gather each token's LoRA matrices padded to the engine's largest "
                         "rank, so an adapter's requests cost in proportion to `--max-lora-rank`, not to the "
                         "adapter's own rank: on a model this small that cost is most of the engine's time. That is why "
                         f"airlock starts the engine with the trainer's default rank, {default_rank}, and a site "
                         "that trains higher ranks raises it knowingly.")
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    return section
