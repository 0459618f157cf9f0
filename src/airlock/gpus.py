"""The host's NVIDIA GPUs as nvidia-smi reports them (no CUDA is initialised for this), and GPU id
lists as settings write them."""

from __future__ import annotations

import shutil
import subprocess


def query(*fields: str) -> list[list[str]]:
    """One row of `fields` per GPU (`index`, `memory.used`, `memory.total` in MiB ...); none
    where nvidia-smi is missing or fails."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[cell.strip() for cell in line.split(",")] for line in out.strip().splitlines()]
    return [row for row in rows if len(row) == len(fields)]


def parse_ids(spec: str) -> list[int]:
    """GPU ids from a setting: "0,1"; "" or "none" for none."""
    spec = spec.strip().lower()
    return [] if spec in ("", "none") else [int(g) for g in spec.split(",") if g.strip()]
