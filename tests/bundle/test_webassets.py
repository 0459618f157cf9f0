"""The web UI's uPlot: vendored from the real locked `uplot-python` wheel, exactly its script, its
stylesheet and the wheel's license text, byte for byte; a wheel of other bytes is refused, and
airlock's own wheel carries what was vendored."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from airlock.bundle.locked_wheel import cached_wheel, fetch, read_lock
from airlock.bundle.payload import sha256_file
from airlock.bundle.webassets import LOCK, PACKAGE_PATH, SERVED_FROM, vendor_locked, vendor_web_assets, vendored
from airlock.bundle.wheels import build_own_wheel, copy_own_sources
from airlock.config import REPO_ROOT
from airlock.errors import IntegrityFailure, NotFound
from wheel_factory import cache_holding, files_under, flipped_copy, one_wheel_lock, only_local_index, small_wheel

REPO_LOCK = REPO_ROOT / LOCK
# Where ./install.sh keeps the wheel; reused so the suite downloads it at most once.
INSTALL_CACHE = REPO_ROOT / ".venv" / ".airlock-web-assets-wheel"
# Each vendored file and the wheel member it is.
MEMBERS = {"uPlot.iife.js": "uplot/static/uPlot.iife.js", "uPlot.min.css": "uplot/static/uPlot.min.css",
           "LICENSE": "uplot_python-1.1.1.dist-info/licenses/LICENSE"}


@pytest.fixture(scope="module")
def uplot_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_wheel(REPO_LOCK, INSTALL_CACHE) or fetch(REPO_LOCK, tmp_path_factory.mktemp("web-assets-wheel"))


def test_the_repos_lock_names_uplot_python_1_1_1() -> None:
    locked = read_lock(REPO_LOCK)
    assert (locked["name"], locked["version"]) == ("uplot-python", "1.1.1")


def test_vendoring_writes_the_wheels_script_stylesheet_and_license_and_nothing_else(uplot_wheel: Path,
                                                                                  tmp_path: Path) -> None:
    dest = tmp_path / "uplot"
    done, written = vendor_web_assets(uplot_wheel, dest, lock_path=REPO_LOCK)
    assert written and files_under(dest) == set(MEMBERS)
    with zipfile.ZipFile(uplot_wheel) as wheel:
        for name, member in MEMBERS.items():
            assert (dest / name).read_bytes() == wheel.read(member)
    assert list(tmp_path.iterdir()) == [dest]  # no scratch folder left beside it
    assert (done["name"], done["version"], done["license"]) == ("uplot", "1.6.16", "MIT")
    assert (done["path"], done["served_from"]) == (PACKAGE_PATH, SERVED_FROM)
    assert done["files"] == {name: sha256_file(dest / name) for name in MEMBERS}
    assert done["source"] == {**read_lock(REPO_LOCK), "file": uplot_wheel.name}
    assert vendored(uplot_wheel, dest)

    # A stray file, or an edited one, is gone after the next vendoring.
    (dest / "uPlot.mousewheel.js").write_text("")
    assert not vendored(uplot_wheel, dest)
    assert vendor_web_assets(uplot_wheel, dest, lock_path=REPO_LOCK) == (done, True)
    assert files_under(dest) == set(MEMBERS)
    with (dest / "uPlot.min.css").open("a") as f:
        f.write(".uplot {}\n")
    assert not vendored(uplot_wheel, dest)


def test_the_checkouts_assets_are_left_alone_when_current(uplot_wheel: Path, tmp_path: Path) -> None:
    cache = cache_holding(uplot_wheel, tmp_path)
    dest = tmp_path / "uplot"
    done, written = vendor_locked(REPO_ROOT, dest, cache)
    assert written and done["version"] == "1.6.16"
    mtime = (dest / "uPlot.iife.js").stat().st_mtime_ns
    assert vendor_locked(REPO_ROOT, dest, cache) == (done, False)  # described all the same, for the SBOM
    assert (dest / "uPlot.iife.js").stat().st_mtime_ns == mtime


def test_a_wheel_with_a_flipped_byte_is_refused_naming_the_file_and_both_hashes(uplot_wheel: Path,
                                                                                tmp_path: Path) -> None:
    changed = flipped_copy(uplot_wheel, tmp_path)
    dest = tmp_path / "uplot"
    with pytest.raises(IntegrityFailure) as caught:
        vendor_web_assets(changed, dest, lock_path=REPO_LOCK)
    message = str(caught.value)
    assert str(changed) in message and sha256_file(changed) in message
    assert read_lock(REPO_LOCK)["sha256"] in message and str(REPO_LOCK) in message
    assert list(tmp_path.iterdir()) == [changed]  # nothing written


@pytest.mark.parametrize("members, refusal", [
    ({"uplot/static/uPlot.min.css": b"", "u-1.0.dist-info/licenses/LICENSE": b"MIT"},
     (NotFound, "holds no uplot/static/uPlot.iife.js")),
    ({"uplot/static/uPlot.iife.js": b"/* (MIT Licensed) .../uPlot (v1.6.16) */", "uplot/static/uPlot.min.css": b""},
     (NotFound, "holds no license text")),
    ({"uplot/static/uPlot.iife.js": b"var uPlot;", "uplot/static/uPlot.min.css": b"",
      "u-1.0.dist-info/licenses/LICENSE": b"MIT"}, (IntegrityFailure, "does not open with uPlot's header")),
])
def test_a_wheel_without_the_script_a_license_or_uplots_header_is_refused(
        tmp_path: Path, members: dict[str, bytes], refusal: tuple[type, str]) -> None:
    wheel = small_wheel(tmp_path / "u-1.0-py3-none-any.whl", members)
    with pytest.raises(refusal[0], match=refusal[1]):
        vendor_web_assets(wheel, tmp_path / "out" / "uplot", lock_path=one_wheel_lock(tmp_path / "w.lock", "u", wheel))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_airlocks_own_wheel_carries_the_vendored_files_the_templates_and_static_files(
        uplot_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A copy of the checkout's sources, so what is vendored is known whatever the checkout holds.
    repo = tmp_path / "repo"
    copy_own_sources(REPO_ROOT, repo)
    vendor_web_assets(uplot_wheel, repo / "src" / PACKAGE_PATH, lock_path=REPO_LOCK)
    only_local_index(monkeypatch, tmp_path / "no-index")  # nothing may be fetched
    own = build_own_wheel(repo, tmp_path / "wheel")
    with zipfile.ZipFile(own["path"]) as built, zipfile.ZipFile(uplot_wheel) as source:
        for name, member in MEMBERS.items():
            assert built.read(f"{PACKAGE_PATH}/{name}") == source.read(member)
        names = set(built.namelist())
    web = repo / "src" / "airlock" / "web"
    served = {f"airlock/web/{path.relative_to(web).as_posix()}" for folder in ("static", "templates")
              for path in (web / folder).rglob("*") if path.is_file()}
    assert len(served) > len(MEMBERS) and served <= names
