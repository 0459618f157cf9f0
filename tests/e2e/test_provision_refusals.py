"""What the provisioning play refuses before it changes a host: a bundle that is missing, cannot be read or fails
verification (checked on the control node, so no host is touched), and, on a host in engines or
workers, an NVIDIA driver older than the bundle's CUDA needs or a missing container toolkit (that
host fails before any role changes it, and the message names what it has and what it needs).

No GPU is present here, so the GPU cases give the play a host whose `nvidia-smi` and `nvidia-ctk`
are stand-ins on PATH reporting a given driver, and a CUDA target by extra variable: the one fault
this machine cannot cause for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from provision_support import local_inventory, playbook_argv, playbook_env, recap, unpacked_playbooks

pytestmark = [pytest.mark.slow]

CUDA_TARGET = json.dumps({"airlock_bundle_target": {"arch": "x86_64", "os": "linux", "glibc": "2.31",
                                                   "python": "3.11", "cuda": "12.8"}})


@pytest.fixture(scope="module")
def playbooks(cpu_bundle, tmp_path_factory) -> Path:
    bundle, fingerprint = cpu_bundle
    control = tmp_path_factory.mktemp("refusals") / "control"
    yield unpacked_playbooks(bundle, fingerprint, control)
    shutil.rmtree(control, ignore_errors=True)  # a whole unpacked bundle: the suite's disk is finite


def _play(playbooks: Path, inventory: Path, *args: str, path_first: Path | None = None) -> subprocess.CompletedProcess:
    env = playbook_env(playbooks)
    if path_first:
        env["PATH"] = f"{path_first}:{env['PATH']}"
    return subprocess.run(playbook_argv(playbooks, inventory, *args), env=env, capture_output=True, text=True,
                          timeout=600, check=False)


def _inventory(tmp_path: Path, bundle: Path, fingerprint: str) -> tuple[Path, Path]:
    root = tmp_path / "host"
    return local_inventory(tmp_path / "inventory.yml", bundle=bundle, fingerprint=fingerprint, root=root,
                           mode="containers", gateway_port=18443, store_port=19000), root


def _untouched(root: Path) -> None:
    assert not root.exists(), sorted(str(p) for p in root.rglob("*"))[:20]


def test_a_missing_bundle_stops_the_play_before_any_host(playbooks, cpu_bundle, tmp_path) -> None:
    _bundle, fingerprint = cpu_bundle
    inventory, root = _inventory(tmp_path, tmp_path / "no-such-bundle", fingerprint)
    done = _play(playbooks, inventory)
    assert done.returncode != 0
    assert "no-such-bundle" in done.stdout and "Verify the bundle with the control node's airlock" in done.stdout
    assert "airlock_host" not in done.stdout
    _untouched(root)


def test_a_bundle_with_a_part_that_cannot_be_read_stops_the_play_before_any_host(playbooks, cpu_bundle,
                                                                                 tmp_path) -> None:
    bundle, fingerprint = cpu_bundle
    broken = tmp_path / "broken"
    broken.mkdir()
    parts = sorted(bundle.glob("payload.tar.part*"))
    for path in bundle.iterdir():  # links, except one part, which is a folder the verifier cannot read as a file
        if path != parts[0]:
            os.link(path, broken / path.name)
    (broken / parts[0].name).mkdir()
    inventory, root = _inventory(tmp_path, broken, fingerprint)
    done = _play(playbooks, inventory)
    assert done.returncode != 0
    assert f"{parts[0].name} ({broken / parts[0].name}): not a regular file" in done.stdout, done.stdout[-3000:]
    _untouched(root)


def test_a_bundle_with_a_flipped_byte_stops_the_play_before_any_host(playbooks, cpu_bundle, tmp_path) -> None:
    bundle, fingerprint = cpu_bundle
    altered = tmp_path / "altered"
    altered.mkdir()
    parts = sorted(bundle.glob("payload.tar.part*"))
    for path in bundle.iterdir():  # links, except the last part, which gets a real flipped byte
        if path != parts[-1]:
            os.link(path, altered / path.name)
    shutil.copyfile(parts[-1], altered / parts[-1].name)
    with (altered / parts[-1].name).open("r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0x01]))
    inventory, root = _inventory(tmp_path, altered, fingerprint)
    try:
        done = _play(playbooks, inventory)
    finally:
        shutil.rmtree(altered)  # its links would keep the bundle's parts on disk after the run removes them
    assert done.returncode != 0
    assert parts[-1].name in done.stdout, done.stdout[-3000:]
    _untouched(root)


def test_a_wrong_root_fingerprint_stops_the_play_before_any_host(playbooks, cpu_bundle, tmp_path) -> None:
    bundle, _fingerprint = cpu_bundle
    inventory, root = _inventory(tmp_path, bundle, "0" * 64)
    done = _play(playbooks, inventory)
    assert done.returncode != 0 and "fingerprint" in done.stdout.lower()
    _untouched(root)


def test_an_inventory_that_splits_the_services_stops_the_play_naming_the_hosts(playbooks, cpu_bundle, tmp_path) -> None:
    bundle, fingerprint = cpu_bundle
    root = tmp_path / "host"
    inventory = local_inventory(tmp_path / "inventory.yml", bundle=bundle, fingerprint=fingerprint, root=root,
                                mode="containers", gateway_port=18443, store_port=19000,
                                groups={"gateways": ["front"], "stores": ["front"], "engines": ["back"],
                                        "workers": ["back"]})
    done = _play(playbooks, inventory)
    assert done.returncode != 0
    assert "front is in gateways but not in engines and workers" in done.stdout, done.stdout[-3000:]
    assert "back is in engines and workers but not in gateways" in done.stdout
    assert "Verify the bundle with the control node's airlock" not in done.stdout
    _untouched(root)


def _stand_in(folder: Path, name: str, script: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("#!/bin/sh\n" + script)
    (folder / name).chmod(0o755)


def test_a_driver_older_than_the_bundles_cuda_fails_on_that_host_before_any_change(playbooks, cpu_bundle, tmp_path) -> None:
    bundle, fingerprint = cpu_bundle
    tools = tmp_path / "tools"
    _stand_in(tools, "nvidia-smi", 'echo "0, 535.104.05, NVIDIA H100 80GB HBM3"\n')
    _stand_in(tools, "nvidia-ctk", 'echo "NVIDIA Container Toolkit CLI version 1.17.4"\n')
    inventory, root = _inventory(tmp_path, bundle, fingerprint)
    done = _play(playbooks, inventory, "-e", CUDA_TARGET, path_first=tools)
    assert done.returncode != 0
    assert "CUDA 12.8" in done.stdout and "570.26" in done.stdout and "535.104.05" in done.stdout, done.stdout[-3000:]
    assert recap(done.stdout)["changed"] == 0
    _untouched(root)


def test_a_host_without_the_container_toolkit_fails_before_any_change(playbooks, cpu_bundle, tmp_path) -> None:
    bundle, fingerprint = cpu_bundle
    tools = tmp_path / "tools"
    _stand_in(tools, "nvidia-smi", 'echo "0, 575.57.08, NVIDIA H100 80GB HBM3"\n')
    inventory, root = _inventory(tmp_path, bundle, fingerprint)
    done = _play(playbooks, inventory, "-e", CUDA_TARGET, path_first=tools)
    assert done.returncode != 0
    assert "NVIDIA Container Toolkit" in done.stdout and "575.57.08" in done.stdout, done.stdout[-3000:]
    _untouched(root)


def test_a_gpu_host_with_a_current_driver_toolkit_and_cdi_spec_passes_the_checks(playbooks, cpu_bundle, tmp_path) -> None:
    bundle, fingerprint = cpu_bundle
    tools, cdi = tmp_path / "tools", tmp_path / "cdi"
    _stand_in(tools, "nvidia-smi", 'echo "0, 575.57.08, NVIDIA H100 80GB HBM3"\n')
    _stand_in(tools, "nvidia-ctk", 'echo "NVIDIA Container Toolkit CLI version 1.17.4"\n')
    cdi.mkdir()
    (cdi / "nvidia.yaml").write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: \"0\"\n"
                                     "containerEdits:\n  mounts:\n  - hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.575.57.08\n")
    inventory, root = _inventory(tmp_path, bundle, fingerprint)
    # stop right after the GPU play: the checks pass, and the host play is not reached
    done = _play(playbooks, inventory, "-e", CUDA_TARGET, "-e", json.dumps({"airlock_gpu_cdi_dirs": [str(cdi)]}),
                 "--tags", "gpu", path_first=tools)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 NVIDIA GPU(s) (NVIDIA H100 80GB HBM3, driver 575.57.08)" in done.stdout
    _untouched(root)
