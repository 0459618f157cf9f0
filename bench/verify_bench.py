"""Benchmark 7: how fast `airlock bundle verify` hashes a bundle's parts, against `sha256sum`.

The same part files, in the page cache (read once before timing, so the disk is not what is
measured), hashed by airlock's part check (`verify_parts`, a thread per core) and by coreutils'
`sha256sum` (one process, one core), runs alternating. Per core = bytes per second / cores used.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from airlock.bundle.parts import verify_parts
from bench.report import Section
from bench.stats import median

TARGET_PER_CORE = 0.8
PART = 64 << 20


def make_parts(folder: Path, total: int) -> list[dict]:
    import hashlib

    parts = []
    block = os.urandom(PART)
    for i in range(total // PART):
        data = block[i:] + block[:i]  # each part different, made without another urandom call
        name = f"payload.tar.part{i:03d}"
        (folder / name).write_bytes(data)
        parts.append({"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return parts


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(quick: bool) -> Section:
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    total, rounds = (256 << 20, 3) if quick else (1 << 30, 5)
    cores = len(os.sched_getaffinity(0))
    section = Section(
        title="7. Bundle verification throughput",
        what=(f"Bytes hashed per second over {total >> 20} MiB of bundle parts ({PART >> 20} MiB each, in the page "
              f"cache): airlock's part check (`verify_parts`, one thread per core, {cores} cores) against "
              f"coreutils `sha256sum` over the same files (one process); {rounds} runs each, alternating. Target: "
              f"airlock's bytes per second per core at least {TARGET_PER_CORE}x sha256sum's."))
    with tempfile.TemporaryDirectory(prefix="airlock-bench-verify-") as tmp:
        folder = Path(tmp)
        parts = make_parts(folder, total)
        names = [str(folder / p["name"]) for p in parts]
        subprocess.run(["cat", *names], stdout=subprocess.DEVNULL, check=True)  # into the page cache
        ours, theirs = [], []
        for _ in range(rounds):
            ours.append(timed(lambda: verify_parts(folder, parts, workers=cores)))
            theirs.append(timed(lambda: subprocess.run(["sha256sum", *names], stdout=subprocess.DEVNULL,
                                                       check=True)))
    mib = total / (1 << 20)
    ours_rate, theirs_rate = mib / median(ours), mib / median(theirs)
    per_core = ours_rate / cores
    section.add("bytes hashed per second per core", f"{theirs_rate:,.0f} MiB/s (sha256sum, 1 core)",
                f"{per_core:,.0f} MiB/s per core ({ours_rate:,.0f} MiB/s on {cores} cores)",
                f"{per_core / theirs_rate:.2f}", f">= {TARGET_PER_CORE}", per_core / theirs_rate >= TARGET_PER_CORE)
    section.notes.append(f"Medians of {rounds} runs; airlock {', '.join(f'{mib / s:,.0f}' for s in ours)} MiB/s, "
                         f"sha256sum {', '.join(f'{mib / s:,.0f}' for s in theirs)} MiB/s. Python's hashlib "
                         "releases the interpreter lock while it hashes a large buffer, so the threads hash in "
                         "parallel.")
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    return section
