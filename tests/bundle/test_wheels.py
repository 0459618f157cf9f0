"""Fetching the target's wheels: the real pip downloads from a local index of small real wheels,
then every file in the folder is checked; airlock's own wheel; the dry run's sizes and hashes."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

import airlock
from airlock.bundle.payload import sha256_file
from airlock.bundle.wheels import build_own_wheel, dry_run, fetch_wheels
from airlock.config import REPO_ROOT
from airlock.errors import IntegrityFailure, InvalidInput
from wheel_factory import lock_line, make_sdist, make_wheel, only_local_index


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pure wheel, and a native one in two builds: glibc 2.17 (the target's) and 2.34 (newer than
    the target allows, the one a plain pip on this host would prefer)."""
    folder = tmp_path / "index"
    make_wheel(folder, "demo", "1.0")
    make_wheel(folder, "demo-native", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    make_wheel(folder, "demo-native", "1.0", tag="cp311-cp311-manylinux_2_34_x86_64", payload="# newer glibc\n")
    only_local_index(monkeypatch, folder)
    return folder


def write_lock(tmp_path: Path, index: Path, *extra: str) -> Path:
    native = sorted(index.glob("demo_native-*.whl"))
    path = tmp_path / "requirements-cpu.lock"
    path.write_text("\n".join(["# test lock", lock_line("demo", "1.0", index / "demo-1.0-py3-none-any.whl"),
                               lock_line("demo-native", "1.0", *native), *extra]) + "\n")
    return path


def test_fetch_wheels_downloads_the_target_files_and_describes_each(tmp_path: Path, index: Path) -> None:
    out = tmp_path / "out"
    wheels = fetch_wheels(write_lock(tmp_path, index), out, target="cpu")
    target_native = "demo_native-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"  # not the 2.34 build
    assert sorted(p.name for p in out.iterdir()) == ["demo-1.0-py3-none-any.whl", target_native]
    assert [(Path(w["path"]).name, w["name"], w["version"]) for w in wheels] == [
        ("demo-1.0-py3-none-any.whl", "demo", "1.0"), (target_native, "demo-native", "1.0")]
    for w in wheels:
        assert w["sha256"] == sha256_file(index / Path(w["path"]).name)
        assert w["size"] == (index / Path(w["path"]).name).stat().st_size


def refusal(tmp_path: Path, index: Path, stray: Path) -> IntegrityFailure:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    if stray.parent != out:
        stray.rename(out / stray.name)
    with pytest.raises(IntegrityFailure) as caught:
        fetch_wheels(write_lock(tmp_path, index), out, target="cpu")
    return caught.value


def test_an_sdist_in_the_folder_refuses_naming_it(tmp_path: Path, index: Path) -> None:
    error = refusal(tmp_path, index, make_sdist(tmp_path / "strays", "demo", "1.0"))
    assert any(p.startswith("demo-1.0.tar.gz: not a wheel") for p in error.problems), error.problems


def test_a_zip_sdist_in_the_folder_refuses_naming_it(tmp_path: Path, index: Path) -> None:
    stray = tmp_path / "strays" / "demo-1.0.zip"
    stray.parent.mkdir()
    with zipfile.ZipFile(stray, "w") as zf:
        zf.writestr("demo-1.0/setup.py", "from setuptools import setup\nsetup()\n")
    error = refusal(tmp_path, index, stray)
    assert any(p.startswith("demo-1.0.zip: not a wheel") for p in error.problems), error.problems


def test_a_wheel_whose_hash_the_lock_lacks_refuses(tmp_path: Path, index: Path) -> None:
    stray = make_wheel(tmp_path / "strays", "demo", "1.0", tag="py2.py3-none-any", payload="# rebuilt\n")
    error = refusal(tmp_path, index, stray)
    assert any(p.startswith(f"{stray.name}: sha256 {sha256_file(tmp_path / 'out' / stray.name)} is not among "
                            "the lock's hashes for demo==1.0") for p in error.problems), error.problems


def test_a_wheel_for_another_platform_refuses_even_with_its_hash_locked(tmp_path: Path, index: Path) -> None:
    stray = make_wheel(tmp_path / "out", "demo-native", "1.0", tag="cp311-cp311-win_amd64")
    out = tmp_path / "out"
    lock = write_lock(tmp_path, index)
    locked = f"demo-native==1.0 --hash=sha256:{sha256_file(stray)} "
    lock.write_text(lock.read_text().replace("demo-native==1.0 ", locked))
    with pytest.raises(IntegrityFailure) as caught:
        fetch_wheels(lock, out, target="cpu")
    assert f"{stray.name}: built for cp311-cp311-win_amd64, not for the target" in "\n".join(caught.value.problems)


def test_a_release_the_lock_does_not_name_refuses(tmp_path: Path, index: Path) -> None:
    error = refusal(tmp_path, index, make_wheel(tmp_path / "strays", "demo", "1.1"))
    assert "demo-1.1-py3-none-any.whl: not a release the lock names (the lock has demo==1.0)" in error.problems


def test_a_file_pip_offers_with_another_hash_is_refused_by_pip(tmp_path: Path, index: Path) -> None:
    lock = write_lock(tmp_path, index)
    lock.write_text(lock.read_text().replace(sha256_file(index / "demo-1.0-py3-none-any.whl"), "0" * 64))
    with pytest.raises(IntegrityFailure, match="demo"):
        fetch_wheels(lock, tmp_path / "out", target="cpu")


def test_an_unhashed_lock_refuses_before_downloading(tmp_path: Path, index: Path) -> None:
    lock = write_lock(tmp_path, index, "demo-extra==1.0")
    with pytest.raises(InvalidInput, match="no --hash"):
        fetch_wheels(lock, tmp_path / "out", target="cpu")
    assert not (tmp_path / "out").exists()


def test_an_unknown_target_refuses(tmp_path: Path, index: Path) -> None:
    with pytest.raises(InvalidInput, match="'arm'"):
        fetch_wheels(write_lock(tmp_path, index), tmp_path / "out", target="arm")


# --- the dry run ----------------------------------------------------------------------------------

def test_the_dry_run_lists_every_file_with_size_and_hash_downloading_nothing(tmp_path: Path, index: Path) -> None:
    listing = dry_run(write_lock(tmp_path, index), "cpu")
    assert [(w["name"], w["file"]) for w in listing] == [
        ("demo", "demo-1.0-py3-none-any.whl"), ("demo-native", "demo_native-1.0-cp311-cp311-manylinux_2_17_x86_64.whl")]
    for w in listing:
        assert (w["size"], w["sha256"]) == ((index / w["file"]).stat().st_size, sha256_file(index / w["file"]))
    assert not (tmp_path / "out").exists()


@pytest.fixture
def http_index(tmp_path: Path, index: Path, monkeypatch: pytest.MonkeyPatch):
    """The same wheels behind a PEP 503 simple index over HTTP on loopback, hashes in the links."""
    root = tmp_path / "served"
    for project in ("demo", "demo-native"):
        page = root / "simple" / project
        page.mkdir(parents=True)
        links = "".join(f'<a href="/files/{w.name}#sha256={sha256_file(w)}">{w.name}</a>\n'
                        for w in sorted(index.glob(f"{project.replace('-', '_')}-*.whl")))
        (page / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
    (root / "files").symlink_to(index)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("PIP_FIND_LINKS")
    monkeypatch.delenv("PIP_NO_INDEX")
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_address[1]}/simple/")
    yield server
    server.shutdown()


def test_the_dry_run_asks_an_http_index_for_sizes_without_downloading(tmp_path: Path, index: Path, http_index) -> None:
    listing = dry_run(write_lock(tmp_path, index), "cpu")
    assert {w["file"]: w["size"] for w in listing} == {
        "demo-1.0-py3-none-any.whl": (index / "demo-1.0-py3-none-any.whl").stat().st_size,
        "demo_native-1.0-cp311-cp311-manylinux_2_17_x86_64.whl":
            (index / "demo_native-1.0-cp311-cp311-manylinux_2_17_x86_64.whl").stat().st_size}


def test_the_dry_run_refuses_a_lock_whose_hash_the_index_does_not_offer(tmp_path: Path, index: Path,
                                                                       http_index) -> None:
    lock = write_lock(tmp_path, index)
    lock.write_text(lock.read_text().replace(sha256_file(index / "demo-1.0-py3-none-any.whl"), "0" * 64))
    with pytest.raises(IntegrityFailure, match="demo"):
        dry_run(lock, "cpu")


# --- airlock's own wheel --------------------------------------------------------------------------

@pytest.mark.slow
def test_airlock_builds_its_own_wheel_offline_reproducibly_and_leaves_the_checkout_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    only_local_index(monkeypatch, tmp_path / "no-index")  # nothing may be fetched
    before = sorted(p.name for p in REPO_ROOT.iterdir())
    first = build_own_wheel(REPO_ROOT, tmp_path / "a")
    second = build_own_wheel(REPO_ROOT, tmp_path / "b")
    assert (first["name"], first["version"]) == ("airlock", airlock.__version__)
    assert first["sha256"] == second["sha256"] == sha256_file(Path(first["path"]))
    assert sorted(p.name for p in REPO_ROOT.iterdir()) == before
    with zipfile.ZipFile(first["path"]) as zf:
        names = set(zf.namelist())
    assert {"airlock/bundle/wheels.py", "airlock/cli/main.py"} <= names
    assert any(n.startswith("airlock/models/corpus/") for n in names)


# --- the real index, when there is a network ------------------------------------------------------

PUBLIC = {  # small real releases with a native build for several glibc levels
    "cryptography==50.0.2": ("cryptography-50.0.2-cp311-abi3-manylinux_2_28_x86_64.whl",
                             "4061c0079120205fb760c58acab6443e217307dcf05e3702cf970e0689972856"),
    "packaging==26.3": ("packaging-26.3-py3-none-any.whl",
                        "d7193f7c8e4e93f444fde0262bf90af30e16fa0ad0ad44cb553c87339b23cd1c"),
}


@functools.cache
def default_index_reachable() -> bool:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    done = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "packaging", "--timeout", "5",
                           "--retries", "0"], capture_output=True, env=env, timeout=60, check=False)
    return done.returncode == 0


@pytest.mark.slow
def test_fetch_wheels_from_pips_default_index_picks_the_targets_build(tmp_path: Path, monkeypatch) -> None:
    if not default_index_reachable():
        pytest.skip("pip's default index cannot be reached from here (no network)")
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    lock = tmp_path / "requirements-cpu.lock"
    lock.write_text("".join(f"{spec} --hash=sha256:{digest}\n" for spec, (_, digest) in PUBLIC.items()))
    wheels = fetch_wheels(lock, tmp_path / "out", target="cpu")
    # cryptography also ships a manylinux_2_34 build, which pip on a newer host would prefer
    assert sorted(Path(w["path"]).name for w in wheels) == sorted(name for name, _ in PUBLIC.values())
