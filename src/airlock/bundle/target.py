"""Whether this host can run a bundle: arch, OS, Python, glibc, the NVIDIA driver's CUDA, disk space.

Checked before anything is unpacked or installed; a mismatch lists every difference at once, each
with what this host has and what the bundle needs, so an operator fixes them in one go.

Standard library only: the stand-alone verifier, run by a bare `python3`, imports this module.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from airlock.bundle.parts import human_bytes
from airlock.errors import InvalidInput

NVIDIA_SMI_TIMEOUT = 10.0  # seconds; a wedged driver must not hang the installer
ARCH_NAMES = {"x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
CUDA_HEADER = re.compile(r"CUDA Version:\s*(\d+(?:\.\d+)*)")
GPU_LINE = re.compile(r"^GPU \d+:", re.MULTILINE)


def _glibc() -> str | None:
    """'2.36' from 'glibc 2.36'; None on a host with another C library."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return None
    match = re.fullmatch(r"glibc (\d+(?:\.\d+)*)", text or "")
    return match.group(1) if match else None


def _nvidia_smi(*args: str) -> str | None:
    """nvidia-smi's output, or None when there is none, it fails, or it hangs."""
    try:
        done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True,
                              timeout=NVIDIA_SMI_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _nvidia() -> tuple[str | None, int]:
    """The CUDA version the driver supports (its header's 'CUDA Version: 12.8') and the GPU count."""
    header = _nvidia_smi()
    if header is None:
        return None, 0
    listing = _nvidia_smi("-L") or ""
    gpus = len(GPU_LINE.findall(listing))
    match = CUDA_HEADER.search(header)
    return (match.group(1) if match and gpus else None), gpus


def host_target() -> dict:
    """This host described in the terms of a bundle's target."""
    machine = platform.machine()
    cuda, gpus = _nvidia()
    return {"arch": ARCH_NAMES.get(machine.lower(), machine),
            "os": "linux" if sys.platform.startswith("linux") else sys.platform,
            "glibc": _glibc(), "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "cuda": cuda, "gpus": gpus}


def _version(text: object, what: str) -> tuple[int, ...]:
    """'2.36' as (2, 36): compared as numbers, so 2.36 is newer than 2.4."""
    if not isinstance(text, str) or not re.fullmatch(r"\d+(?:\.\d+)*", text):
        raise InvalidInput(f"{what}: {text!r} is not a version like 2.36")
    return tuple(int(n) for n in text.split("."))


def _older(have: tuple[int, ...], need: tuple[int, ...]) -> bool:
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) < need + (0,) * (width - len(need))


def check_target(bundle_target: dict, host: dict) -> None:
    """Refuse a bundle this host cannot run, listing every mismatch."""
    problems = []
    for field, label in (("arch", "architecture"), ("os", "operating system")):
        if host.get(field) != bundle_target.get(field):
            problems.append(f"{label}: this host is {host.get(field)}, the bundle is built for {bundle_target.get(field)}")
    need_python = _version(bundle_target.get("python"), "the bundle's target.python")[:2]
    have_python = _version(host.get("python"), "this host's python")[:2]
    if have_python != need_python:
        problems.append(f"Python: this host runs {'.'.join(map(str, have_python))}, the bundle's wheels are "
                        f"for {'.'.join(map(str, need_python))}")
    need_glibc = _version(bundle_target.get("glibc"), "the bundle's target.glibc")
    if host.get("glibc") is None:
        problems.append(f"glibc: this host has no GNU C library, the bundle needs glibc {bundle_target['glibc']} "
                        "or newer")
    elif _older(_version(host["glibc"], "this host's glibc"), need_glibc):
        problems.append(f"glibc: this host has {host['glibc']}, the bundle needs {bundle_target['glibc']} or newer")
    need_cuda = bundle_target.get("cuda")
    if need_cuda is not None:  # a CPU bundle runs on any host, GPU or not
        if not host.get("gpus") or host.get("cuda") is None:
            problems.append(f"CUDA: this host has no NVIDIA GPU that answers nvidia-smi, the bundle is built "
                            f"for CUDA {need_cuda}; install the cpu bundle here")
        elif _older(_version(host["cuda"], "this host's CUDA"), _version(need_cuda, "the bundle's target.cuda")):
            problems.append(f"CUDA: this host's NVIDIA driver supports CUDA {host['cuda']}, the bundle needs "
                            f"{need_cuda} or newer; update the driver")
    if problems:
        raise InvalidInput("this host cannot run the bundle (what the host has, what the bundle needs)",
                           problems=problems)


def check_free_space(path: Path | str, needed_bytes: int, *, what: str) -> None:
    """Refuse before writing when the filesystem that will hold `path` has less than `needed_bytes` free."""
    path = Path(path).absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise InvalidInput(f"{what} needs {human_bytes(needed_bytes)} at {path}, but the filesystem of {probe} "
                           f"has {human_bytes(free)} free; free {human_bytes(needed_bytes - free)} or choose "
                           "another place")
