"""Whether a host can run a bundle: the table of host and bundle pairs, nvidia-smi, free space."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import pytest

from airlock.bundle import target
from airlock.bundle.target import check_free_space, check_target, host_target
from airlock.errors import InvalidInput

CPU = {"arch": "x86_64", "os": "linux", "glibc": "2.36", "python": "3.11", "cuda": None}
CUDA = {**CPU, "cuda": "12.8"}
HOST = {"arch": "x86_64", "os": "linux", "glibc": "2.36", "python": "3.11", "cuda": None, "gpus": 0}
GPU_HOST = {**HOST, "cuda": "12.8", "gpus": 1}


@pytest.mark.parametrize(("host", "bundle"), [
    (HOST, CPU),
    ({**HOST, "glibc": "2.36"}, {**CPU, "glibc": "2.4"}),  # 36 > 4 as numbers
    ({**HOST, "glibc": "2.39"}, {**CPU, "glibc": "2.17"}),
    ({**HOST, "glibc": "2.36"}, {**CPU, "glibc": "2.36.0"}),
    ({**HOST, "python": "3.11"}, {**CPU, "python": "3.11"}),
    (GPU_HOST, CPU),  # a CPU bundle runs on a GPU host
    (GPU_HOST, CUDA),
    ({**GPU_HOST, "cuda": "12.10"}, {**CUDA, "cuda": "12.9"}),
    ({**GPU_HOST, "cuda": "13.0", "gpus": 8}, CUDA),
], ids=["same", "glibc-2.36-vs-2.4", "newer-glibc", "glibc-trailing-zero", "python", "cpu-bundle-on-gpu-host",
        "cuda-same", "cuda-12.10-vs-12.9", "newer-driver"])
def test_a_host_that_can_run_the_bundle_is_accepted(host: dict, bundle: dict) -> None:
    check_target(bundle, host)


@pytest.mark.parametrize(("host", "bundle", "problem"), [
    ({**HOST, "glibc": "2.31"}, CPU, "glibc: this host has 2.31, the bundle needs 2.36 or newer"),
    ({**HOST, "glibc": "2.9"}, {**CPU, "glibc": "2.17"}, "glibc: this host has 2.9, the bundle needs 2.17 or newer"),
    ({**HOST, "glibc": None}, CPU, "glibc: this host has no GNU C library, the bundle needs glibc 2.36 or newer"),
    ({**HOST, "arch": "aarch64"}, CPU, "architecture: this host is aarch64, the bundle is built for x86_64"),
    ({**HOST, "os": "darwin"}, CPU, "operating system: this host is darwin, the bundle is built for linux"),
    ({**HOST, "python": "3.12"}, CPU, "Python: this host runs 3.12, the bundle's wheels are for 3.11"),
    (HOST, CUDA, "CUDA: this host has no NVIDIA GPU that answers nvidia-smi, the bundle is built for CUDA 12.8"),
    ({**GPU_HOST, "gpus": 0}, CUDA, "CUDA: this host has no NVIDIA GPU"),
    ({**GPU_HOST, "cuda": "12.4"}, CUDA,
     "CUDA: this host's NVIDIA driver supports CUDA 12.4, the bundle needs 12.8 or newer; update the driver"),
    ({**GPU_HOST, "cuda": "12.8"}, {**CUDA, "cuda": "12.10"}, "supports CUDA 12.8, the bundle needs 12.10 or newer"),
], ids=["glibc-2.31-vs-2.36", "glibc-2.9-vs-2.17", "no-glibc", "arch", "os", "python", "cuda-without-gpu",
        "cuda-zero-gpus", "old-driver", "cuda-12.8-vs-12.10"])
def test_a_host_that_cannot_run_the_bundle_is_refused(host: dict, bundle: dict, problem: str) -> None:
    with pytest.raises(InvalidInput, match=r"this host cannot run the bundle") as err:
        check_target(bundle, host)
    assert len(err.value.problems) == 1 and problem in err.value.problems[0]


def test_every_mismatch_is_listed_at_once() -> None:
    host = {"arch": "aarch64", "os": "linux", "glibc": "2.28", "python": "3.10", "cuda": None, "gpus": 0}
    with pytest.raises(InvalidInput) as err:
        check_target(CUDA, host)
    assert [p.split(":")[0] for p in err.value.problems] == ["architecture", "Python", "glibc", "CUDA"]
    assert "  - glibc: this host has 2.28, the bundle needs 2.36 or newer" in str(err.value)


def test_a_malformed_version_names_its_side_and_field() -> None:
    with pytest.raises(InvalidInput, match=r"the bundle's target.glibc: 'two' is not a version like 2.36"):
        check_target({**CPU, "glibc": "two"}, HOST)


def fake_nvidia_smi(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)


NVIDIA_HEADER = """\
if [ "$1" = "-L" ]; then
  echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)"
  echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)"
  exit 0
fi
echo "+-----------------------------------------------------------------------------------------+"
echo "| NVIDIA-SMI 570.124.06             Driver Version: 570.124.06     CUDA Version: 12.8     |"
"""


def test_the_host_is_described_with_its_driver_cuda_and_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path / "bin", NVIDIA_HEADER)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    host = host_target()
    assert host["cuda"] == "12.8" and host["gpus"] == 2
    assert host["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert host["os"] == "linux"
    assert host["arch"] == {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine())
    assert host["glibc"] == os.confstr("CS_GNU_LIBC_VERSION").split()[1]
    check_target(CUDA, host | {"arch": "x86_64", "glibc": "2.36", "python": "3.11"})


DRIVER_DOWN = "echo 'NVIDIA-SMI has failed because it could not communicate with the driver'\nexit 9\n"


@pytest.mark.parametrize("body", [DRIVER_DOWN, "exec sleep 5\n"], ids=["driver-down", "hangs"])
def test_a_gpu_that_does_not_answer_counts_as_none(body: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path / "bin", body)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setattr(target, "NVIDIA_SMI_TIMEOUT", 0.5)
    host = host_target()
    assert (host["cuda"], host["gpus"]) == (None, 0)


def test_no_nvidia_smi_at_all_means_no_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert host_target()["gpus"] == 0


def test_too_little_free_space_names_the_path_the_need_and_the_free_space(tmp_path: Path) -> None:
    check_free_space(tmp_path, 1024, what="the unpacked bundle")
    not_yet = tmp_path / "releases" / "next"  # not created yet: its nearest existing ancestor is measured
    with pytest.raises(InvalidInput) as err:
        check_free_space(not_yet, 1 << 60, what="the unpacked bundle")
    message = str(err.value)
    assert message.startswith(f"the unpacked bundle needs 1.0 EiB at {not_yet}, but the filesystem of "
                              f"{tmp_path} has ")
    assert " free; free " in message and ("GiB" in message or "TiB" in message or "MiB" in message)
    assert not not_yet.parent.exists()
