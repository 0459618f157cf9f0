"""Benchmark 12: the gateway's memory while it receives dataset uploads of growing size.

Each upload goes to a fresh gateway process (`python -m airlock gateway`, as `airlock up` runs
it), so the kernel's high-water mark of its resident memory (VmHWM) is that upload's peak. The
baseline is the same measurement for the smallest upload: a gateway whose memory grew with the
upload would show a peak above idle about 16 times the baseline's at 16x the size; one that
validates line by line and stores from the file shows about the same.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import httpx

from airlock.access.keys import create_key
from airlock.config import Settings
from airlock.meta import open_meta
from bench.procs import GatewayProcess, free_port
from bench.report import Section

SCALES = (1, 4, 16)
TARGET = 1.5  # the peak above idle at 16x the size, at most this multiple of the one at 1x
MB = 1 << 20


def write_dataset(path: Path, size: int) -> int:
    """About `size` bytes of distinct chat records; returns how many."""
    n = 0
    with path.open("w") as f:
        while f.tell() < size:
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"What is item {n} of the inventory?"},
                {"role": "assistant", "content": f"Item {n} is a spare part kept in bay {n % 97}."}]}) + "\n")
            n += 1
    return n


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def measure(scratch: Path, dataset: Path, name: str) -> tuple[int, int, float]:
    """(idle KiB, peak KiB, seconds) of one fresh gateway receiving `dataset`."""
    home = scratch / f"home-{name}"
    settings = Settings(home=home, gateway_port=free_port(), vllm_port=free_port(), store_backend="local",
                        max_upload_bytes=1 << 30)
    _, key = create_key(open_meta(settings.db_path), "bench-uploads", role="trainer")
    gateway = GatewayProcess(settings, name=f"upload-{name}")
    gateway.start()
    try:
        time.sleep(1.0)  # let start-up allocations settle before reading the idle size
        idle = rss_kib(gateway.proc.pid, "VmRSS")
        started = time.perf_counter()
        with dataset.open("rb") as body:
            resp = httpx.post(f"{gateway.url}/api/datasets", params={"name": name}, content=body, timeout=600,
                              headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"})
        took = time.perf_counter() - started
        resp.raise_for_status()
        return idle, rss_kib(gateway.proc.pid, "VmHWM"), took
    finally:
        gateway.stop()


def run(quick: bool) -> Section:
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    base = (4 if quick else 8) * MB
    section = Section(
        title="12. Gateway memory during dataset uploads",
        what=(f"The gateway's resident memory while it receives one dataset upload of {base // MB} MiB (1x), "
              f"{4 * base // MB} MiB (4x) and {16 * base // MB} MiB (16x) of chat records over `POST /api/datasets`, "
              "each into a fresh gateway process (`python -m airlock gateway`): its kernel high-water mark (VmHWM) "
              "less its resident size when idle. Baseline: the 1x upload's peak above idle. Target: the 16x "
              f"upload's peak above idle at most {TARGET}x the baseline's (memory does not grow with the upload)."))
    rows, above = [], {}
    with tempfile.TemporaryDirectory(prefix="airlock-bench-upload-") as tmp:
        scratch = Path(tmp)
        for scale in SCALES:
            dataset = scratch / f"upload-{scale}x.jsonl"
            records = write_dataset(dataset, base * scale)
            idle, peak, took = measure(scratch, dataset, f"{scale}x")
            size = dataset.stat().st_size
            above[scale] = peak - idle
            rows.append([f"{scale}x", f"{size / MB:.1f}", f"{records:,}", f"{idle / 1024:.1f}", f"{peak / 1024:.1f}",
                         f"{(peak - idle) / 1024:.1f}", f"{(peak - idle) * 1024 / size:.3f}",
                         f"{size / MB / took:.1f}"])
            dataset.unlink()
    ratio = above[16] / max(above[1], 1)
    section.add("peak above idle, 16x upload against 1x", f"{above[1] / 1024:.1f} MiB", f"{above[16] / 1024:.1f} MiB",
                f"{ratio:.2f}x", f"<= {TARGET}x", ratio <= TARGET)
    section.seconds, section.load = time.perf_counter() - started, (load0, os.getloadavg()[0])
    section.details.append(("Each upload", ("size", "MiB", "records", "idle MiB", "peak MiB", "peak above idle MiB",
                                            "above idle / upload", "MiB/s received and stored"), rows))
    return section
