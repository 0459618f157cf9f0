"""A training job's memory: the limit it keeps to, and what it says when memory runs out.

A run that names `resources.memory_gb` gets that much and no more: on the CPU as the process's
data limit (RLIMIT_DATA: the heap and private mappings, the tensors among them), on a GPU as
torch's share of each of the job's GPUs. Training past it fails with an out-of-memory error in
the job instead of pushing the host into swap, the kernel's OOM killer, or another run's (or the
engine's) memory. An estimated claim is reserved but not enforced: an estimate may be short.
"""

from __future__ import annotations

import re

MIB = 1024 * 1024


def apply_memory_limit(limit_mb: int, processes: int) -> str:
    """Keep this process within its share of `limit_mb`; returns where the limit applies."""
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.current_device()
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(limit_mb * MIB / total, 1.0), device)
        return f"{limit_mb} MiB of GPU {device}"
    import resource

    share = max(limit_mb // max(processes, 1), 1)
    resource.setrlimit(resource.RLIMIT_DATA, (share * MIB, resource.RLIM_INFINITY))
    return f"{share} MiB of memory" + (f" (a {processes}th of {limit_mb} MiB)" if processes > 1 else "")


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    text = str(exc)
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text \
        or "not enough memory" in text


def out_of_memory_message(exc: BaseException, *, where: str, steps_done: int, total: int | None,
                          config: dict, limit: str | None) -> str:
    """The reason a run failed for memory, in words, with what to change. `total` is the run's
    step count once training has started (None while it sets up)."""
    asked = re.search(r"tried to allocate (\d+(?:\.\d+)?) ?(bytes|[KMG]iB)", str(exc))
    if asked:
        amount, unit = float(asked.group(1)), asked.group(2)
        mib = amount / MIB if unit == "bytes" else amount * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]
        wanted = f" (allocating {mib:,.0f} MiB more failed)"
    else:
        wanted = ""
    at = f" in step {steps_done + 1} of {total}" if total else " while setting up"
    within = f", within the run's limit of {limit} (resources.memory_gb)" if limit else ""
    fixes = [f"lower batch_size (now {config.get('batch_size')}) or max_length (now {config.get('max_length')})"]
    if not config.get("gradient_checkpointing"):
        fixes.append("set gradient_checkpointing: true")
    if limit:
        fixes.append("raise resources.memory_gb")
    if where.startswith("GPU") and config.get("method") != "qlora":
        fixes.append("use method: qlora")
    return f"out of memory on {where}{at}{wanted}{within}: " + "; or ".join(fixes)
