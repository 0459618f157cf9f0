"""One wheel that files are vendored from, pinned by a one-line hash lock and never installed: the
lock, the check of the wheel against it, its download, the all-or-nothing writing of the members
taken from it, and the `python -m` entry of the modules that do so (`collections.py`, `webassets.py`).

A lock is one `name==version --hash=sha256:HEX64` line, comments aside. Standard library only but
for `fetch`, which imports the wheel fetcher (pip, packaging) when it is called, so vendoring from
a wheel at hand runs from a bare checkout too.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from airlock.bundle.extract import safe_relpath
from airlock.bundle.payload import sha256_file
from airlock.errors import AirlockError, IntegrityFailure, InvalidInput, NotFound

LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) --hash=sha256:([0-9a-f]{64})$")
CHUNK = 1 << 20


def meaningful_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """(line number, text) of each line of `path` that is not blank once its comment is cut."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file ({what})") from None
    lines = [(number, raw.split("#", 1)[0].strip()) for number, raw in enumerate(text.splitlines(), 1)]
    return [(number, line) for number, line in lines if line]


def read_lock(path: Path) -> dict:
    """{name, version, sha256} of the one wheel `path` locks."""
    lines = meaningful_lines(path, "the lock of the wheel vendored files are taken from")
    if len(lines) != 1:
        raise InvalidInput(f"{path}: expected exactly one `name==version --hash=sha256:...` line, "
                           f"found {len(lines)}")
    number, line = lines[0]
    match = LOCK_LINE.match(line)
    if not match:
        raise InvalidInput(f"{path}: line {number}: {line!r} is not `name==version --hash=sha256:HEX64`")
    return {"name": match.group(1), "version": match.group(2), "sha256": match.group(3)}


def check_wheel(wheel_path: Path, lock_path: Path) -> dict:
    """The lock's entry and the wheel's file name, once the wheel's sha256 is the one it locks."""
    locked = read_lock(lock_path)
    digest = sha256_file(wheel_path)
    if digest != locked["sha256"]:
        raise IntegrityFailure(f"{wheel_path}: sha256 {digest}, but {lock_path} locks "
                               f"{locked['name']}=={locked['version']} at sha256 {locked['sha256']}")
    return {**locked, "file": wheel_path.name}


def cached_wheel(lock_path: Path, cache_dir: Path) -> Path | None:
    """The locked wheel in `cache_dir` when one is there with the locked sha256."""
    locked = read_lock(lock_path)
    # A wheel's file name spells the project's '-' and '.' as '_' (uplot-python: uplot_python-...).
    stem = re.sub(r"[-_.]+", "_", locked["name"])
    for path in sorted(Path(cache_dir).glob(f"{stem}-{locked['version']}-*.whl")):
        if sha256_file(path) == locked["sha256"]:
            return path
    return None


def fetch(lock_path: Path, cache_dir: Path) -> Path:
    """The locked wheel, downloaded into `cache_dir` (a folder of its own: the fetcher refuses any
    other file there) unless it is there already."""
    found = cached_wheel(lock_path, cache_dir)
    if found:
        return found
    from airlock.bundle.wheels import fetch_wheels  # pip and packaging: only the download needs them

    # The vendored wheels are pure Python: any target's tags pick the same file.
    (wheel,) = fetch_wheels(lock_path, Path(cache_dir), target="cpu")
    return Path(wheel["path"])


def file_members(wheel: zipfile.ZipFile, source: Path) -> dict[str, zipfile.ZipInfo]:
    """Every regular file of the wheel by its path; any unsafe member anywhere refuses the whole
    wheel, whether or not it would be taken."""
    files: dict[str, zipfile.ZipInfo] = {}
    seen, problems = set(), []
    for info in wheel.infolist():
        path = info.filename.removesuffix("/") if info.is_dir() else info.filename
        reason = safe_relpath(path)
        if reason:
            problems.append(f"{info.filename!r}: {reason}")
            continue
        if path in seen:
            problems.append(f"{info.filename!r}: appears twice (the second would replace the first)")
            continue
        seen.add(path)
        if stat.S_ISLNK(info.external_attr >> 16):
            problems.append(f"{info.filename!r}: a symbolic link; only regular files are vendored")
            continue
        if not info.is_dir():
            files[path] = info
    if problems:
        raise IntegrityFailure(f"{source}: members that cannot be extracted safely", problems=problems)
    return files


def _write(wheel: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Plain files only: what is vendored is copied and served or run elsewhere, never executed here.
    fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with wheel.open(info) as source, os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK)


def _replace(fresh: Path, dest: Path) -> None:
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    fresh.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def write_members(wheel: zipfile.ZipFile, chosen: dict[str, zipfile.ZipInfo], dest: Path) -> None:
    """Replace `dest` with exactly the chosen members, each at its key (a path under `dest`): written
    beside it first and swapped in whole, so a failure leaves the old folder as it was."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        for relpath, info in chosen.items():
            _write(wheel, info, fresh / relpath)
        os.chmod(fresh, 0o755)
        _replace(fresh, dest)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise


def holds_exactly(dest: Path, wheel: zipfile.ZipFile, chosen: dict[str, zipfile.ZipInfo]) -> bool:
    """Whether `dest` holds the chosen members at their keys, byte for byte, and nothing else."""
    if not dest.is_dir():
        return False
    on_disk = set()
    for path in dest.rglob("*"):
        if path.is_symlink():
            return False
        if not path.is_dir():
            on_disk.add(path.relative_to(dest).as_posix())
    if on_disk != set(chosen):
        return False
    return all((dest / relpath).read_bytes() == wheel.read(info) for relpath, info in chosen.items())


def command_line(argv: list[str] | None, *, prog: str, description: str, default_dest: Path,
                 vendor: Callable[[Path, Path, Path], list[str]]) -> int:
    """A vendoring module's `python -m` entry: `vendor(repo, dest, cache)` does the work and returns
    the lines to print; a refusal prints its error and exits with its code."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--repo", type=Path, default=Path("."), help="the checkout (default: .)")
    p.add_argument("--dest", type=Path, help=f"default: REPO/{default_dest}")
    p.add_argument("--cache", type=Path, required=True, help="a folder of its own for the downloaded wheel")
    args = p.parse_args(argv)
    try:
        lines = vendor(args.repo, args.dest or args.repo / default_dest, args.cache)
    except AirlockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    for line in lines:
        print(line)
    return 0
