"""Training on a GPU the engine serves from: fit beside it, or put it to sleep meanwhile.

vLLM takes `AIRLOCK_VLLM_GPU_MEMORY_UTILIZATION` of its GPU's memory (0.9 by default). A run
whose claim includes one of the engine's GPUs (`AIRLOCK_ENGINE_GPUS`) starts only when its memory
estimate fits in what the engine leaves. Where it does not and
`AIRLOCK_ENGINE_SLEEP_FOR_TRAINING` is set, the engine is put to sleep (vLLM's sleep mode: its
weights move to host memory and its KV cache is freed) for as long as the run trains, and the
gateway answers 503 with Retry-After for it meanwhile; else the run is refused before it starts,
with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from airlock.context import Airlock
from airlock.gpus import parse_ids, query
from airlock.meta.db import now

# What a sleeping engine still holds on its GPU (its CUDA context and allocator), in MiB.
SLEEPING_ENGINE_MIB = 1024


@dataclass(frozen=True)
class Fit:
    decision: str  # "fits", "sleep" or "refuse"
    message: str = ""


def gpu_totals_mib() -> dict[int, float]:
    """Each GPU's memory in MiB."""
    return {int(index): float(total) for index, total in query("index", "memory.total")}


def fit_beside_engine(airlock: Airlock, gpus: list[int], memory_mb: int, totals: dict[int, float]) -> Fit:
    """Whether a run needing `memory_mb` on each of `gpus` fits beside the engine."""
    shared = sorted(set(gpus) & set(parse_ids(airlock.settings.engine_gpus)))
    if not shared:
        return Fit("fits")
    settings = airlock.settings
    share = settings.vllm_gpu_memory_utilization
    for gpu in shared:
        total = totals.get(gpu)
        if total is None:
            continue
        left = total * (1 - share)
        if memory_mb <= left:
            continue
        numbers = (f"it needs about {memory_mb:.0f} MiB on GPU {gpu}, and the engine takes {share:.0%} of its "
                   f"{total:.0f} MiB (AIRLOCK_VLLM_GPU_MEMORY_UTILIZATION={share}), leaving {left:.0f} MiB")
        if settings.engine_sleep_for_training and memory_mb <= total - SLEEPING_ENGINE_MIB:
            return Fit("sleep", f"{numbers}: the engine sleeps while it trains")
        return Fit("refuse", f"the run does not fit beside the engine: {numbers}; lower batch_size or max_length, "
                             "use gradient_checkpointing or method qlora, train on a GPU the engine does not use, "
                             "or set AIRLOCK_ENGINE_SLEEP_FOR_TRAINING=true")
    return Fit("fits")


def sleep_engine(airlock: Airlock, run_id: str, retry_after_s: float) -> None:
    """Record first (the gateway answers 503 from then on), then put the engine to sleep."""
    from airlock.serve.engine import engine_client

    with airlock.meta.write() as db:
        db["engine_sleep"].upsert({"run_id": run_id, "since": now(), "retry_after_s": retry_after_s}, pk="run_id")
    airlock.meta.audit("worker", "engine.sleep", run_id)
    engine_client(airlock.settings).sleep(level=1)


def wake_engine(airlock: Airlock, run_id: str) -> None:
    """Wake the engine when no other run keeps it asleep; the gateway serves again after."""
    from airlock.serve.engine import engine_client

    with airlock.meta.write() as db:
        db.execute("DELETE FROM engine_sleep WHERE run_id = ?", [run_id])
        others = db.execute("SELECT COUNT(*) FROM engine_sleep").fetchone()[0]
    if not others:
        engine_client(airlock.settings).wake_up()
        airlock.meta.audit("worker", "engine.wake", run_id)
