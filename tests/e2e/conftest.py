"""A real appliance (`airlock up`: gateway, worker, vLLM) in a subprocess, and one CPU bundle built
from this checkout (its service images included), each shared by the e2e tests of a run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from e2e_support import PASSPHRASE, REPO_ROOT, RunningAppliance, running_appliance

from airlock.bundle.build import BuildRequest, build
from airlock.trust.ceremony import init_root



@pytest.fixture(scope="session")
def appliance(tmp_path_factory, tiny_models_dir) -> RunningAppliance:
    with running_appliance(tmp_path_factory.mktemp("appliance") / "home", tiny_models_dir) as running:
        yield running


@pytest.fixture(scope="session")
def cpu_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> tuple[Path, str]:
    """One CPU bundle per test run, images included: building downloads the target's wheels and
    makes the images' Debian base once; the bundle and the root key's fingerprint.

    AIRLOCK_TEST_BUNDLE=DIR:FINGERPRINT reuses a bundle built from this checkout before (it is
    verified like any other), to rerun these tests without building again."""
    given = os.environ.get("AIRLOCK_TEST_BUNDLE", "")
    if given:
        folder, _, fingerprint = given.rpartition(":")
        yield Path(folder), fingerprint
        return
    base = tmp_path_factory.mktemp("bundle")
    ceremony = init_root(base / "ceremony", root_keys=1, threshold=1, demo=True, passphrase=lambda _p: PASSPHRASE)
    build(BuildRequest(target="cpu", out=base / "airlock-cpu", root=ceremony.root_path,
                       keys=ceremony.key_files["bundle"], passphrase=lambda _p: PASSPHRASE, repo=REPO_ROOT,
                       models_dir=tiny_models_dir, part_size=512 << 20, images=True))
    yield base / "airlock-cpu", ceremony.root.roles["root"].keyids[0]
    # The tests load the images into this host's podman; a run leaves none of them behind.
    manifest = json.loads((base / "airlock-cpu" / "manifest.json").read_bytes())
    tags = [image["tag"] for image in manifest["contents"]["images"]]
    subprocess.run(["podman", "rmi", "--force", "--ignore", *tags], capture_output=True, check=False)


@pytest.fixture(scope="session")
def provision_root() -> Path:
    """Where the provisioning tests install: one prefix for the run, so the release the first
    provisioning installed is what the later ones find (as on a host provisioned again). Outside
    pytest's own temporary folder, which is root's alone (0700): the service user must traverse the
    path to the release's venv it runs in processes mode, as it traverses /opt on a real host."""
    root = Path(tempfile.mkdtemp(prefix="airlock-provisioned-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)
