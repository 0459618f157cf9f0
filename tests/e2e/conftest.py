"""A real appliance (`airlock up`: gateway, worker, vLLM) in a subprocess, and the CPU bundles built
from this checkout (service images included) while the rest of the suite runs, each shared by the
e2e tests of a run."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import bundle_builder
import pytest
from e2e_support import RunningAppliance, running_appliance

BUILD_DIR = "AIRLOCK_TEST_BUILD_DIR"  # set by tests/conftest.py, which starts the builder


@pytest.fixture(scope="session")
def appliance(tmp_path_factory, tiny_models_dir) -> RunningAppliance:
    with running_appliance(tmp_path_factory.mktemp("appliance") / "home", tiny_models_dir) as running:
        yield running


BUILD_TIMEOUT_S = 3600
def _built(name: str) -> Path:
    """OUT/name once the builder marked it done; a failed or vanished build fails the test with its log."""
    out = Path(os.environ[BUILD_DIR])
    pid = int((out / "pid").read_text())
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    while not (out / f"{name}.done").exists():
        gone = (out / "failed").exists() or not Path(f"/proc/{pid}").exists()
        if gone or time.monotonic() > deadline:
            log = (out / "build.log").read_text(errors="replace")[-6000:]
            pytest.fail(f"building {name} in {out} {'failed' if gone else 'timed out'}:\n{log}", pytrace=False)
        time.sleep(2)
    return out / name


def _builder_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Where no builder runs (AIRLOCK_TEST_BUILD_DIR unset: a run the start-up did not expect to need
    the bundles), build here and now, in this process."""
    if not os.environ.get(BUILD_DIR):
        out = tmp_path_factory.mktemp("bundles")
        (out / "pid").write_text(str(os.getpid()))
        bundle_builder.main(out)
        os.environ[BUILD_DIR] = str(out)


@pytest.fixture(scope="session")
def cpu_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One CPU bundle per test run, images included (building downloads the target's wheels and makes
    the images' Debian base once): the bundle and the root key's fingerprint. It is built beside the
    rest of the suite (bundle_builder.py); this waits for it.

    AIRLOCK_TEST_BUNDLE=DIR:FINGERPRINT reuses a bundle built from this checkout before (it is
    verified like any other), to rerun these tests without building again: OUT/airlock-cpu of
    `python tests/e2e/bundle_builder.py OUT` brings the later releases along."""
    given = os.environ.get("AIRLOCK_TEST_BUNDLE", "")
    if given:
        folder, _, fingerprint = given.rpartition(":")
        return Path(folder), fingerprint
    _builder_folder(tmp_path_factory)
    bundle = _built(bundle_builder.BUNDLE)
    return bundle, (bundle.parent / bundle_builder.FINGERPRINT).read_text()


@pytest.fixture(scope="session")
def later_bundles(cpu_bundle, tmp_path_factory) -> dict[str, Path]:
    """Releases after cpu_bundle's, signed by the same root: `next` with its images, `bare` without."""
    bundle, _ = cpu_bundle
    if (bundle.parent / f"{bundle_builder.BARE}.done").exists():  # a given bundle_builder.py folder
        yield {"next": bundle.parent / bundle_builder.NEXT, "bare": bundle.parent / bundle_builder.BARE}
        return
    if os.environ.get("AIRLOCK_TEST_BUNDLE"):  # built here, after the given bundle
        base, ceremony = tmp_path_factory.mktemp("later"), bundle.parent / "ceremony"
        sequence = json.loads((bundle / "manifest.json").read_bytes())["sequence"]
        yield {"next": bundle_builder.build_release(ceremony, base / "next", sequence=sequence + 1, images=True),
               "bare": bundle_builder.build_release(ceremony, base / "bare", sequence=sequence + 2, images=False)}
        shutil.rmtree(base, ignore_errors=True)
        return
    yield {"next": _built(bundle_builder.NEXT), "bare": _built(bundle_builder.BARE)}


@pytest.fixture(scope="session")
def host_image_built(cpu_bundle) -> None:
    """The test hosts' image, made by the builder meanwhile (host_containers.host_image finds it)."""
    if not os.environ.get("AIRLOCK_TEST_BUNDLE"):
        _built(bundle_builder.HOST_IMAGE)


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
