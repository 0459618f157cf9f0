"""What host a bundle being built is for: arch, OS, the oldest glibc its wheels accept, Python,
and the CUDA release of its wheels (none for the CPU target).

The glibc minimum is read off the wheels' own manylinux tags, so it is what the carried binaries
really need, not what the build host happens to run.
"""

from __future__ import annotations

import re
from pathlib import Path

from airlock.errors import InvalidInput

TARGETS = ("cpu", "cuda")
PYTHON = "3.11"
ARCH = "x86_64"
# manylinux tags that predate PEP 600's glibc-versioned form.
LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_")
CUDA_RUNTIME = re.compile(r"^nvidia[-_]cuda[-_]runtime(?:[-_]cu\d+)?$")


def _glibc_of(platform_tag: str) -> tuple[int, int] | None:
    m = MANYLINUX.match(platform_tag)
    if m:
        return int(m.group(1)), int(m.group(2))
    return LEGACY.get(platform_tag.split("_")[0])


def min_glibc(wheel_files: list[str]) -> str:
    """The highest glibc any wheel needs; a wheel that fits several tags needs the lowest of them."""
    needed = (2, 17)
    for name in wheel_files:
        platforms = name[:-len(".whl")].split("-")[-1].split(".")
        versions = [v for v in (_glibc_of(p) for p in platforms) if v]
        if versions:
            needed = max(needed, min(versions))
    return f"{needed[0]}.{needed[1]}"


def cuda_release(wheels: list[dict]) -> str:
    for wheel in wheels:
        if CUDA_RUNTIME.match(wheel["name"].lower()):
            major, minor = wheel["version"].split(".")[:2]
            return f"{major}.{minor}"
    raise InvalidInput("target cuda: the lock holds no nvidia-cuda-runtime wheel to tell its CUDA release")


def bundle_target(target: str, wheels: list[dict]) -> dict:
    files = [Path(w["path"]).name for w in wheels]
    return {"arch": ARCH, "os": "linux", "glibc": min_glibc(files), "python": PYTHON,
            "cuda": cuda_release(wheels) if target == "cuda" else None}
