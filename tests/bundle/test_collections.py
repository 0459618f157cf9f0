"""The playbooks' Ansible collections: vendored from the real locked `ansible` wheel, exactly the
listed ones; a wheel of other bytes, an unsafe member or an unlisted dependency is refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

import airlock
from airlock.bundle.collections import (LOCK, NAMES, TREE, VENDORED, read_names, vendor_collections, vendor_locked,
                                        vendored)
from airlock.bundle.locked_wheel import cached_wheel, fetch, read_lock
from airlock.bundle.payload import sha256_file
from airlock.bundle.sbom import build_sbom
from airlock.config import REPO_ROOT
from airlock.errors import IntegrityFailure, InvalidInput
from wheel_factory import cache_holding, files_under, flipped_copy, one_wheel_lock, small_wheel

REPO_LOCK = REPO_ROOT / LOCK
PODMAN = f"{TREE}/containers/podman/"
# Where ./install.sh keeps the wheel; reused so the suite downloads its 50 MB at most once.
INSTALL_CACHE = REPO_ROOT / ".venv" / ".airlock-collections-wheel"


@pytest.fixture(scope="module")
def ansible_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_wheel(REPO_LOCK, INSTALL_CACHE) or fetch(REPO_LOCK, tmp_path_factory.mktemp("collections-wheel"))


def lock_for(path: Path, wheel: Path) -> Path:
    return one_wheel_lock(path, "ansible", wheel)


def collection_manifest(namespace: str, name: str, version: str = "1.0.0", dependencies: dict | None = None) -> bytes:
    return json.dumps({"collection_info": {"namespace": namespace, "name": name, "version": version,
                                           "dependencies": dependencies or {}}}).encode()


def test_the_repos_lock_and_list_name_one_wheel_and_containers_podman() -> None:
    locked = read_lock(REPO_LOCK)
    assert (locked["name"], locked["version"]) == ("ansible", "12.3.0")
    assert read_names(REPO_ROOT / NAMES) == ["containers.podman"]


def test_vendoring_the_locked_wheel_extracts_containers_podman_and_nothing_else(ansible_wheel: Path,
                                                                                 tmp_path: Path) -> None:
    dest = tmp_path / "collections"
    (done,) = vendor_collections(ansible_wheel, ["containers.podman"], dest, lock_path=REPO_LOCK)
    with zipfile.ZipFile(ansible_wheel) as wheel:
        expected = {n for n in wheel.namelist() if n.startswith(PODMAN) and not n.endswith("/")}
        assert len(expected) < len(wheel.namelist()) / 100  # the wheel holds far more than what is taken
        for name in sorted(expected)[:10]:
            assert (dest / name).read_bytes() == wheel.read(name)
    assert files_under(dest) == expected
    assert list(tmp_path.iterdir()) == [dest]  # no scratch folder left beside it
    manifest = json.loads((dest / PODMAN / "MANIFEST.json").read_text())["collection_info"]
    assert done["name"] == "containers.podman" and done["version"] == manifest["version"]
    assert done["files"] == len(expected) and done["path"] == f"{TREE}/containers/podman"
    assert done["source"] == {**read_lock(REPO_LOCK), "file": ansible_wheel.name}
    assert vendored(ansible_wheel, ["containers.podman"], dest)

    # A collection left over from an earlier list, or an edited file, is gone after the next vendoring.
    (dest / TREE / "community" / "general").mkdir(parents=True)
    (dest / TREE / "community" / "general" / "MANIFEST.json").write_bytes(collection_manifest("community", "general"))
    assert not vendored(ansible_wheel, ["containers.podman"], dest)
    vendor_collections(ansible_wheel, ["containers.podman"], dest, lock_path=REPO_LOCK)
    assert files_under(dest) == expected and vendored(ansible_wheel, ["containers.podman"], dest)
    with (dest / PODMAN / "README.md").open("a") as f:
        f.write("an edit\n")
    assert not vendored(ansible_wheel, ["containers.podman"], dest)


def test_the_checkouts_collections_are_left_alone_when_current(ansible_wheel: Path, tmp_path: Path) -> None:
    cache = cache_holding(ansible_wheel, tmp_path)
    dest = tmp_path / "collections"
    done, written = vendor_locked(REPO_ROOT, dest, cache)
    assert written and [c["name"] for c in done] == ["containers.podman"]
    mtime = (dest / PODMAN / "MANIFEST.json").stat().st_mtime_ns
    assert vendor_locked(REPO_ROOT, dest, cache) == ([], False)
    assert (dest / PODMAN / "MANIFEST.json").stat().st_mtime_ns == mtime


def test_a_wheel_of_other_bytes_is_refused_naming_the_file_and_both_hashes(ansible_wheel: Path,
                                                                           tmp_path: Path) -> None:
    changed = flipped_copy(ansible_wheel, tmp_path)
    dest = tmp_path / "collections"
    with pytest.raises(IntegrityFailure) as caught:
        vendor_collections(changed, ["containers.podman"], dest, lock_path=REPO_LOCK)
    message = str(caught.value)
    assert str(changed) in message and sha256_file(changed) in message
    assert read_lock(REPO_LOCK)["sha256"] in message and str(REPO_LOCK) in message
    assert not dest.exists()


@pytest.mark.parametrize("unsafe", [
    f"{PODMAN}../../../../evil.py",
    "../evil.py",
    "/etc/evil.py",
    f"{PODMAN}plugins\\evil.py",
    f"{PODMAN}./evil.py",
])
def test_a_member_with_an_unsafe_path_refuses_the_wheel(tmp_path: Path, unsafe: str) -> None:
    wheel = small_wheel(tmp_path / "ansible-1.0-py3-none-any.whl", {
        f"{PODMAN}MANIFEST.json": collection_manifest("containers", "podman"), unsafe: b"print('escaped')"})
    dest = tmp_path / "out" / "collections"
    with pytest.raises(IntegrityFailure, match="cannot be extracted safely") as caught:
        vendor_collections(wheel, ["containers.podman"], dest, lock_path=lock_for(tmp_path / "c.lock", wheel))
    assert repr(unsafe) in str(caught.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("evil.py"))


def test_a_symbolic_link_member_refuses_the_wheel(tmp_path: Path) -> None:
    wheel = small_wheel(tmp_path / "ansible-1.0-py3-none-any.whl",
                        {f"{PODMAN}MANIFEST.json": collection_manifest("containers", "podman")},
                        links=(f"{PODMAN}plugins/passwd",))
    with pytest.raises(IntegrityFailure, match="a symbolic link"):
        vendor_collections(wheel, ["containers.podman"], tmp_path / "collections",
                           lock_path=lock_for(tmp_path / "c.lock", wheel))


def test_a_dependency_the_list_lacks_or_a_missing_collection_is_refused(tmp_path: Path) -> None:
    wheel = small_wheel(tmp_path / "ansible-1.0-py3-none-any.whl", {
        f"{PODMAN}MANIFEST.json": collection_manifest("containers", "podman",
                                                      dependencies={"ansible.posix": ">=1.0.0"})})
    lock = lock_for(tmp_path / "c.lock", wheel)
    with pytest.raises(InvalidInput, match="containers.podman needs ansible.posix >=1.0.0"):
        vendor_collections(wheel, ["containers.podman"], tmp_path / "collections", lock_path=lock)
    with pytest.raises(Exception, match="holds no collection community.general"):
        vendor_collections(wheel, ["containers.podman", "community.general"], tmp_path / "collections", lock_path=lock)
    assert not (tmp_path / "collections").exists()


@pytest.mark.parametrize("text, problem", [
    ("", "exactly one"),
    ("ansible==1 --hash=sha256:" + "a" * 64 + "\nansible-core==2 --hash=sha256:" + "b" * 64 + "\n", "exactly one"),
    ("ansible>=1 --hash=sha256:" + "a" * 64 + "\n", "is not `name==version"),
    ("ansible==1\n", "is not `name==version"),
])
def test_a_lock_other_than_one_pinned_hashed_line_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "c.lock").write_text(text)
    with pytest.raises(InvalidInput, match=problem):
        read_lock(tmp_path / "c.lock")


def test_the_sbom_names_the_collection_its_version_and_the_wheel_it_came_from(ansible_wheel: Path,
                                                                             tmp_path: Path) -> None:
    done = vendor_collections(ansible_wheel, ["containers.podman"], tmp_path / "c", lock_path=REPO_LOCK)
    sbom = build_sbom(version="0.1.0", created=datetime(2026, 1, 1, tzinfo=UTC), wheels=[], models=[], files={},
                      images=[], collections=done)
    (component,) = sbom["components"]
    assert (component["name"], component["version"]) == ("containers.podman", done[0]["version"])
    (ancestor,) = component["pedigree"]["ancestors"]
    assert ancestor["purl"] == "pkg:pypi/ansible@12.3.0"
    assert ancestor["hashes"] == [{"alg": "SHA-256", "content": read_lock(REPO_LOCK)["sha256"]}]
    path = f"{VENDORED.as_posix()}/{TREE}/containers/podman"
    assert {"name": "airlock:path", "value": path} in component["properties"]


BARE = textwrap.dedent("""
    import sys, sysconfig
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from airlock.bundle.collections import vendor_collections
    done = vendor_collections(Path(sys.argv[2]), ["containers.podman"], Path(sys.argv[3]), lock_path=Path(sys.argv[4]))
    stdlib = sysconfig.get_paths()["stdlib"]
    outside = sorted(name for name, mod in sys.modules.items()
                     if getattr(mod, "__file__", None) and not mod.__file__.startswith((stdlib, sys.argv[1])))
    assert not outside, outside
    print(done[0]["name"])
""")


def test_vendoring_runs_on_a_bare_python_with_the_standard_library_only(ansible_wheel: Path, tmp_path: Path) -> None:
    # -I: no PYTHONPATH, no user site; -S: no site-packages, so no pip or packaging to lean on.
    src = str(Path(airlock.__file__).parent.parent)
    done = subprocess.run([sys.executable, "-I", "-S", "-c", BARE, src, str(ansible_wheel), str(tmp_path / "c"),
                           str(REPO_LOCK)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "containers.podman"
