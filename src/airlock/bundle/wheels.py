"""The target's wheels for a bundle: exactly the files a lock names, binary only, checked after pip.

pip downloads with the lock's hashes required and the target's tags forced; then every file in the
folder is checked again on its own (a wheel, tags the target accepts, a sha256 the lock lists for
that name and version, one file per locked release, nothing else), so an sdist or a stray file
left in the folder refuses the build instead of travelling.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from airlock.bundle.locks import Requirement, read_lock
from airlock.bundle.payload import sha256_file
from airlock.bundle.pip_run import run_pip
from airlock.bundle.resolve import picks_of, resolver_report
from airlock.bundle.target_spec import TARGETS
from airlock.bundle.wheel_tags import pip_target_args, wheel_problem
from airlock.errors import IntegrityFailure, InvalidInput

# What the build of airlock's own wheel reads from the checkout.
OWN_SOURCES = ("pyproject.toml", "README.md", "src")
# A fixed time for every member of airlock's own wheel: the same source gives the same bytes.
SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, the oldest time a zip member can carry
BUILD_TIMEOUT_S = 600
HEAD_TIMEOUT_S = 60
HEAD_WORKERS = 16


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise InvalidInput(f"target {target!r}: expected one of {', '.join(TARGETS)}")


def check_wheels(folder: Path, lock: list[Requirement], *, source: str) -> list[dict]:
    """Every file in `folder` against the lock; all problems at once, each naming its file."""
    wanted = {canonicalize_name(r.name): r for r in lock}
    found: dict[str, Path] = {}
    problems, wheels = [], []
    for path in sorted(folder.iterdir()):
        if path.is_symlink() or not path.is_file():
            problems.append(f"{path.name}: not a regular file")
            continue
        why = wheel_problem(path.name)
        if why:
            problems.append(f"{path.name}: {why}")
            continue
        name, version, _, _ = parse_wheel_filename(path.name)
        req = wanted.get(name)
        if req is None or version != Version(req.version):
            locked = f"the lock has {req.name}=={req.version}" if req else f"the lock has no {name}"
            problems.append(f"{path.name}: not a release the lock names ({locked})")
            continue
        digest = sha256_file(path)
        if digest not in req.hashes:
            problems.append(f"{path.name}: sha256 {digest} is not among the lock's hashes "
                            f"for {req.name}=={req.version}")
            continue
        if name in found:
            problems.append(f"{path.name}: a second file for {req.name}=={req.version} (also {found[name].name})")
            continue
        found[name] = path
        wheels.append({"path": str(path), "size": path.stat().st_size, "sha256": digest,
                       "name": req.name, "version": req.version})
    problems += [f"{r.name}=={r.version}: no file for it in {folder}" for key, r in sorted(wanted.items())
                 if key not in found]
    if problems:
        raise IntegrityFailure(f"{folder}: the wheels do not match {source}", problems=problems)
    return wheels


def fetch_wheels(lock_path: Path, out_dir: Path, *, target: str) -> list[dict]:
    """Download every file of the lock for the target into `out_dir` (kept files are reused when
    their hash matches) and check the folder; [{path, size, sha256, name, version}] by file name."""
    _check_target(target)
    lock = read_lock(lock_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_pip(["download", "--no-deps", "--require-hashes", "--progress-bar", "off", *pip_target_args(),
             "-r", str(lock_path), "-d", str(out_dir)],
            what=f"downloading the {target} target's wheels of {lock_path} (a CPU torch build is found "
                 "through PIP_FIND_LINKS or PIP_EXTRA_INDEX_URL when no index of this host has it)")
    return check_wheels(out_dir, lock, source=str(lock_path))


def copy_own_sources(repo_root: Path, dest: Path) -> None:
    """What the build of airlock's own wheel reads, copied from the checkout into `dest`."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in OWN_SOURCES:
        if (repo_root / name).is_dir():
            shutil.copytree(repo_root / name, dest / name, ignore=skip)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo_root / name, dest / name)


def build_own_wheel(repo_root: Path, out_dir: Path) -> dict:
    """airlock's own wheel from the checkout, built offline with the installed build backend (no
    build isolation, so nothing is fetched), in a scratch copy so the checkout gets no build/ or
    egg-info; {path, size, sha256, name, version}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="airlock-own-wheel-") as tmp:
        source, built = Path(tmp) / "source", Path(tmp) / "built"
        copy_own_sources(repo_root, source)
        run_pip(["wheel", "--no-deps", "--no-build-isolation", "--quiet", "--wheel-dir", str(built), str(source)],
                what=f"building airlock's own wheel from {repo_root} (with the installed build backend, setuptools)",
                extra_env={"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PIP_NO_INDEX": "1"}, timeout_s=BUILD_TIMEOUT_S)
        (wheel,) = built.glob("*.whl")
        path = out_dir / wheel.name
        shutil.move(wheel, path)
    name, version, _, _ = parse_wheel_filename(path.name)
    return {"path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path),
            "name": str(name), "version": str(version)}


def _size(url: str) -> int | None:
    """A file's size without fetching it: stat for a local file, HEAD's Content-Length otherwise."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return os.stat(unquote(parts.path)).st_size
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=HEAD_TIMEOUT_S, context=ssl.create_default_context()) as reply:
            length = reply.headers.get("Content-Length")
    except OSError as exc:
        raise InvalidInput(f"{url}: cannot ask its size: {exc}") from None
    return int(length) if length else None


def dry_run(lock_path: Path, target: str) -> list[dict]:
    """Every wheel the target needs, with sha256 and size, downloading nothing: pip's resolver report
    names each chosen file (URL and sha256 from the index's metadata), a HEAD request gives its size.
    [{name, version, file, sha256, size}] by name; a chosen file the lock does not allow refuses."""
    _check_target(target)
    lock = {canonicalize_name(r.name): r for r in read_lock(lock_path)}
    picks = picks_of(resolver_report(["--no-deps", "--require-hashes", "-r", str(lock_path)],
                                     what=f"resolving {lock_path} for the {target} target"))
    problems = [f"{p.filename}: {why}" for p in picks.values() if (why := wheel_problem(p.filename))]
    problems += [f"{p.filename}: sha256 {p.sha256} is not among the lock's hashes"
                 for name, p in picks.items() if name in lock and p.sha256 not in lock[name].hashes]
    problems += [f"{r.name}=={r.version}: the resolver chose no file" for n, r in lock.items() if n not in picks]
    if problems:
        raise IntegrityFailure(f"{lock_path}: the files chosen for the {target} target do not match", problems=problems)
    with ThreadPoolExecutor(HEAD_WORKERS) as pool:
        sizes = list(pool.map(_size, [p.url for p in picks.values()]))
    listing = [{"name": lock[n].name, "version": p.version, "file": p.filename, "sha256": p.sha256, "size": size}
               for (n, p), size in zip(picks.items(), sizes)]
    return sorted(listing, key=lambda w: canonicalize_name(w["name"]))
