"""Which queued runs the worker starts now, and which running run makes way for a waiting one.

Pure decisions over plain rows, so they are tested without a worker. A run claims GPUs, CPU
threads and memory (`resources` of its spec, the memory estimated when not given) and starts
only when all of it is free; runs start highest priority first, first come first served within
a priority. What is free while a run waits is held for it; a lower run may start in the rest (a
CPU run beside a GPU run that waits for a GPU). A waiting run that does not fit preempts running runs of lower priority whose claims would make it fit:
the lowest priority first, the most recently started first among equals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from airlock.config import Settings
from airlock.gpus import parse_ids, query


@dataclass
class Capacity:
    cpu_threads: int
    memory_mb: int  # 0: memory is not accounted
    gpus: list[int] = field(default_factory=list)

    def describe(self) -> str:
        memory = f"{self.memory_mb} MiB" if self.memory_mb else "unaccounted memory"
        return f"{self.cpu_threads} CPU threads, {memory}, GPUs {self.gpus or 'none'}"


def capacity_of(settings: Settings) -> Capacity:
    auto = settings.worker_gpus.strip().lower() == "auto"
    gpus = [int(row[0]) for row in query("index")] if auto else parse_ids(settings.worker_gpus)
    gpus = prefer(gpus, set(parse_ids(settings.engine_gpus)))
    threads = settings.worker_cpu_threads or max(settings.worker_threads, 1) * max(len(gpus), 1)
    return Capacity(cpu_threads=threads, memory_mb=int(settings.worker_memory_gb * 1024), gpus=gpus)


def never_fits(want: dict, capacity: Capacity) -> str | None:
    """Why a run can never start on this worker, or None."""
    if want.get("gpus", 0) > len(capacity.gpus):
        return (f"it asks for {want['gpus']} GPU(s) and this worker has {len(capacity.gpus)} "
                "(AIRLOCK_WORKER_GPUS); lower resources.gpus")
    if want.get("cpu_threads", 1) > capacity.cpu_threads:
        return (f"it asks for {want['cpu_threads']} CPU threads and this worker hands out at most "
                f"{capacity.cpu_threads} (AIRLOCK_WORKER_CPU_THREADS); lower resources.cpu_threads")
    if capacity.memory_mb and want.get("memory_mb", 0) > capacity.memory_mb:
        return (f"it needs about {want['memory_mb']} MiB and this worker hands out at most "
                f"{capacity.memory_mb} MiB (AIRLOCK_WORKER_MEMORY_GB)")
    return None


def free_of(capacity: Capacity, claims: list[dict]) -> Capacity:
    used_gpus = {g for c in claims for g in c["gpus"]}
    return Capacity(cpu_threads=capacity.cpu_threads - sum(c["cpu_threads"] for c in claims),
                    memory_mb=capacity.memory_mb - sum(c["memory_mb"] for c in claims) if capacity.memory_mb else 0,
                    gpus=[g for g in capacity.gpus if g not in used_gpus])


def allocate(want: dict, free: Capacity, accounted: bool) -> dict | None:
    """The claim for `want` out of `free`, or None when it does not fit."""
    threads, gpus, memory = want.get("cpu_threads", 1), want.get("gpus", 0), want.get("memory_mb", 0)
    if threads > free.cpu_threads or gpus > len(free.gpus) or (accounted and memory > free.memory_mb):
        return None
    # A memory figure the run named itself is also its limit; an estimate is only reserved.
    return {"cpu_threads": threads, "gpus": free.gpus[:gpus], "memory_mb": memory,
            "memory_limit": want.get("memory_estimated") is False}


def prefer(gpus: list[int], avoid: set[int]) -> list[int]:
    """GPUs in the order runs get them: those the engine does not serve from first."""
    return sorted(gpus, key=lambda g: (g in avoid, g))


@dataclass
class Plan:
    start: list[tuple[str, dict]] = field(default_factory=list)  # (run id, claim)
    preempt: list[str] = field(default_factory=list)


def plan(queued: list[dict], running: list[dict], capacity: Capacity) -> Plan:
    """`queued`: {id, priority, want} in queue order; `running`: {id, priority, claim, started}."""
    out, claims = Plan(), [r["claim"] for r in running]
    accounted = capacity.memory_mb > 0
    for run in queued:
        free = free_of(capacity, claims)
        if (claim := allocate(run["want"], free, accounted)) is not None:
            out.start.append((run["id"], claim))
            claims.append(claim)
            continue
        newest_first = sorted((r for r in running if r["priority"] < run["priority"] and r["id"] not in out.preempt),
                              key=lambda r: r["started"], reverse=True)
        victims, freed = [], list(claims)
        for victim in sorted(newest_first, key=lambda r: r["priority"]):
            victims.append(victim["id"])
            freed.remove(victim["claim"])
            if allocate(run["want"], free_of(capacity, freed), accounted) is not None:
                out.preempt += victims
                break
        # What is free now is held for this run: later, lower runs may start only in the rest.
        claims.append(_holding(run["want"], free))
    return out


def _holding(want: dict, free: Capacity) -> dict:
    return {"cpu_threads": min(want.get("cpu_threads", 1), max(free.cpu_threads, 0)),
            "gpus": free.gpus[:want.get("gpus", 0)],
            "memory_mb": min(want.get("memory_mb", 0), max(free.memory_mb, 0))}
