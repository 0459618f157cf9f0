"""Releases installed beside each other, switched only when healthy, rolled back; and the stand-alone
verifier run by a bare `python3` with no third-party package at all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from airlock.bundle import install as installer
from airlock.bundle.podman_load import parse_services as installer_services
from airlock.bundle.verifier import build_verifier
from airlock.errors import AirlockError, IntegrityFailure
from bundle_factory import NOW, Keys, kid, make_bundle


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def run_install(bundle: Path, prefix: Path, keys: Keys, **kw) -> dict:
    # The bundles here carry one small wheel, not the appliance: its health checks do not apply.
    return installer.install(bundle, prefix, now=NOW, fingerprint=kid(keys.root[0]), health=False, **kw)


def current(prefix: Path) -> str:
    return os.readlink(prefix / "current")


def test_install_upgrade_and_rollback(tmp_path: Path, keys: Keys) -> None:
    prefix = tmp_path / "opt"
    make_bundle(tmp_path / "b5", keys, sequence=5)
    make_bundle(tmp_path / "b6", keys, sequence=6)
    state = run_install(tmp_path / "b5", prefix, keys)
    assert state == {"current": "0.1.0-5", "previous": None, "highest_sequence": 5, "images": [], "images_skipped": 0}
    venv_python = prefix / "current" / "venv" / "bin" / "python"
    assert subprocess.run([venv_python, "-c", "import airlock_demo"], check=False).returncode == 0
    # console scripts name their interpreter's path: the venv was made where it stays
    assert subprocess.run([prefix / "current" / "venv" / "bin" / "pip", "--version"], capture_output=True,
                          check=False).returncode == 0
    assert (prefix / "trust" / "root.json").exists()
    home = tmp_path / "airlock-home"
    home.mkdir()
    (home / "airlock.db").write_text("data")  # AIRLOCK_HOME is never touched
    run_install(tmp_path / "b6", prefix, keys)
    assert current(prefix) == "releases/0.1.0-6"
    assert installer.rollback(prefix)["current"] == "0.1.0-5"
    assert current(prefix) == "releases/0.1.0-5"
    # the highest sequence installed stays the floor: b5 again, or anything older, is refused
    make_bundle(tmp_path / "b4", keys, sequence=4)
    with pytest.raises(IntegrityFailure, match="sequence 4 is below the installed bundle's 6"):
        run_install(tmp_path / "b4", prefix, keys)
    assert (home / "airlock.db").read_text() == "data"


def test_a_failing_install_leaves_the_current_release(tmp_path: Path, keys: Keys) -> None:
    prefix = tmp_path / "opt"
    make_bundle(tmp_path / "b5", keys, sequence=5)
    run_install(tmp_path / "b5", prefix, keys)
    make_bundle(tmp_path / "b6", keys, sequence=6)
    with pytest.raises(AirlockError, match="health check"):
        # the real health checks: this bundle has no airlock in it, so they fail after the unpack
        installer.install(tmp_path / "b6", prefix, now=NOW)
    assert current(prefix) == "releases/0.1.0-5"
    assert sorted(p.name for p in (prefix / "releases").iterdir()) == ["0.1.0-5"]
    assert json.loads((prefix / "state.json").read_text())["highest_sequence"] == 5


def test_a_bundle_refused_at_verification_writes_nothing(tmp_path: Path, keys: Keys) -> None:
    m = make_bundle(tmp_path / "b", keys)
    part = tmp_path / "b" / m["parts"][0]["name"]
    part.write_bytes(b"\0" + part.read_bytes()[1:])
    with pytest.raises(IntegrityFailure, match=m["parts"][0]["name"]):
        run_install(tmp_path / "b", tmp_path / "opt", keys)
    assert sorted(p.name for p in (tmp_path / "opt").iterdir()) == [".install.lock"]


@pytest.mark.parametrize("backend", ["openssl", "cryptography"])
def test_the_standalone_verifier_runs_on_a_bare_python(tmp_path: Path, keys: Keys, backend: str) -> None:
    m = make_bundle(tmp_path / "b", keys)
    pyz = build_verifier(tmp_path / "b" / "airlock-verify.pyz")
    python = shutil.which("python3") or sys.executable
    env = {"PATH": os.environ["PATH"], "AIRLOCK_ED25519_BACKEND": backend}
    # -I -S: no site-packages at all, so nothing but the standard library can be imported
    bare = [python, "-I", "-S"] if backend == "openssl" else [sys.executable]

    def verifier(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*bare, str(pyz), *args], capture_output=True, text=True, env=env, timeout=120)

    ok = verifier("verify", str(tmp_path / "b"), "--fingerprint", kid(keys.root[2]), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["sequence"] == m["sequence"]
    shown = verifier("show-root", str(tmp_path / "b"))
    assert kid(keys.root[2])[:4] in shown.stdout
    part = tmp_path / "b" / m["parts"][-1]["name"]
    part.write_bytes(part.read_bytes() + b"x")
    bad = verifier("verify", str(tmp_path / "b"), "--fingerprint", kid(keys.root[2]))
    assert bad.returncode != 0 and m["parts"][-1]["name"] in bad.stderr


def test_the_verifier_zipapp_is_reproducible(tmp_path: Path) -> None:
    a, b = build_verifier(tmp_path / "a.pyz"), build_verifier(tmp_path / "b.pyz")
    assert a.read_bytes() == b.read_bytes()


def _tiny_image(tmp_path: Path, tag: str) -> Path:
    """A real OCI archive of a one-file image, made with podman (no registry, no base)."""
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "hello").write_text("hello\n")
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
    subprocess.run(["podman", "import", "-", tag], input=tar, capture_output=True, check=True)
    archive = tmp_path / "tiny.oci.tar"
    subprocess.run(["podman", "save", "--format", "oci-archive", "--output", str(archive), tag],
                   capture_output=True, check=True)
    subprocess.run(["podman", "rmi", "--force", tag], capture_output=True, check=True)
    return archive


def _image_exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag], capture_output=True).returncode == 0


def test_images_are_loaded_and_an_install_that_fails_leaves_none_behind(tmp_path: Path, keys: Keys) -> None:
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: ./install.sh installs it (apt-get install podman runc)")
    loaded = f"localhost/airlock-test-tiny-{os.urandom(4).hex()}:1"
    archive = _tiny_image(tmp_path, loaded)
    try:
        make_bundle(tmp_path / "ok", keys, sequence=5, images={"gateway": (archive, loaded)})
        state = run_install(tmp_path / "ok", tmp_path / "opt", keys)
        assert state["images"] == [loaded] and _image_exists(loaded)
        subprocess.run(["podman", "rmi", "--force", loaded], capture_output=True, check=True)
        # the second image's archive does not hold the tag the manifest names: the install fails
        # after the first image was loaded, and takes it out again
        make_bundle(tmp_path / "bad", keys, sequence=6,
                    images={"gateway": (archive, loaded), "worker": (archive, "localhost/airlock-test-tiny:not-in-the-archive")})
        with pytest.raises(AirlockError, match="not-in-the-archive"):
            run_install(tmp_path / "bad", tmp_path / "opt", keys)
        assert not _image_exists(loaded)
        assert current(tmp_path / "opt") == "releases/0.1.0-5"
    finally:
        subprocess.run(["podman", "rmi", "--force", "--ignore", loaded], capture_output=True, check=False)


def test_a_host_loads_only_the_images_it_names_and_an_unknown_one_is_refused(tmp_path: Path, keys: Keys) -> None:
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: ./install.sh installs it (apt-get install podman runc)")
    tags = {service: f"localhost/airlock-test-tiny-{service}-{os.urandom(4).hex()}:1" for service in ("gateway", "worker")}
    (tmp_path / "gateway").mkdir()
    (tmp_path / "worker").mkdir()
    images = {service: (_tiny_image(tmp_path / service, tag), tag) for service, tag in tags.items()}
    try:
        make_bundle(tmp_path / "b", keys, sequence=5, images=images)
        with pytest.raises(AirlockError, match=r"--images worker,engine: engine not among this bundle's images \(gateway, worker\)"):
            run_install(tmp_path / "b", tmp_path / "opt", keys, services=installer_services("worker,engine"))
        assert not (tmp_path / "opt" / "releases" / "0.1.0-5").exists() and not _image_exists(tags["worker"])
        state = run_install(tmp_path / "b", tmp_path / "opt", keys, services=installer_services("worker"))
        assert state["images"] == [tags["worker"]]
        assert _image_exists(tags["worker"]) and not _image_exists(tags["gateway"])
        assert installer_services("none") == [] and installer_services(None) is None
    finally:
        subprocess.run(["podman", "rmi", "--force", "--ignore", *tags.values()], capture_output=True, check=False)
