"""The Ansible collections the playbooks use, vendored from one hash-locked wheel and never fetched
from a galaxy server.

`wheels/collections.lock` pins the community `ansible` wheel (`ansible==VERSION --hash=sha256:...`),
which carries every collection of an Ansible release under `ansible_collections/`;
`playbooks/collections.txt` names the few the playbooks use. Vendoring checks the wheel against the
lock and writes exactly those collections' files, so a built bundle signs them like every payload
file and a provisioning run loads nothing else (playbooks/ansible.cfg points Ansible there only).

    python -m airlock.bundle.collections [--dest playbooks/collections] [--cache DIR]

Standard library only when vendoring; fetching the wheel imports the wheel fetcher (pip, packaging)
when it is called, so the vendoring half runs from a bare checkout too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import zipfile
from pathlib import Path

from airlock.bundle.extract import safe_relpath
from airlock.bundle.payload import sha256_file
from airlock.errors import AirlockError, IntegrityFailure, InvalidInput, NotFound

LOCK = Path("wheels") / "collections.lock"
NAMES = Path("playbooks") / "collections.txt"
VENDORED = Path("playbooks") / "collections"  # what playbooks/ansible.cfg names as collections_path
TREE = "ansible_collections"
# Galaxy's rule for namespaces and names: lower case, digits and '_', not starting with either of the last two.
NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) --hash=sha256:([0-9a-f]{64})$")
CHUNK = 1 << 20


def _meaningful_lines(path: Path, what: str) -> list[tuple[int, str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file ({what})") from None
    lines = [(number, raw.split("#", 1)[0].strip()) for number, raw in enumerate(text.splitlines(), 1)]
    return [(number, line) for number, line in lines if line]


def read_lock(path: Path) -> dict:
    """{name, version, sha256} of the one wheel `path` locks."""
    lines = _meaningful_lines(path, "the lock of the wheel the playbooks' collections come from")
    if len(lines) != 1:
        raise InvalidInput(f"{path}: expected exactly one `name==version --hash=sha256:...` line, "
                           f"found {len(lines)}")
    number, line = lines[0]
    match = LOCK_LINE.match(line)
    if not match:
        raise InvalidInput(f"{path}: line {number}: {line!r} is not `name==version --hash=sha256:HEX64`")
    return {"name": match.group(1), "version": match.group(2), "sha256": match.group(3)}


def read_names(path: Path) -> list[str]:
    """The collections listed in `path`, one `namespace.name` a line."""
    names, problems = [], []
    for number, line in _meaningful_lines(path, "the collections the playbooks use"):
        if not NAME.match(line):
            problems.append(f"line {number}: {line!r} is not namespace.name")
        elif line in names:
            problems.append(f"line {number}: {line} is listed twice")
        else:
            names.append(line)
    if problems or not names:
        raise InvalidInput(f"{path}: not a list of collections", problems=problems or ["no collection listed"])
    return names


def check_wheel(wheel_path: Path, lock_path: Path) -> dict:
    """The lock's entry, once the wheel's sha256 is the one it locks."""
    locked = read_lock(lock_path)
    digest = sha256_file(wheel_path)
    if digest != locked["sha256"]:
        raise IntegrityFailure(f"{wheel_path}: sha256 {digest}, but {lock_path} locks "
                               f"{locked['name']}=={locked['version']} at sha256 {locked['sha256']}")
    return {**locked, "file": wheel_path.name}


def _members(wheel: zipfile.ZipFile, names: list[str], source: Path) -> dict[str, list[zipfile.ZipInfo]]:
    """Each collection's file members; any unsafe member anywhere refuses the whole wheel."""
    prefixes = {name: f"{TREE}/{name.replace('.', '/')}/" for name in names}
    chosen: dict[str, list[zipfile.ZipInfo]] = {name: [] for name in names}
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
        if info.is_dir():
            continue
        for name, prefix in prefixes.items():
            if path.startswith(prefix):
                chosen[name].append(info)
    if problems:
        raise IntegrityFailure(f"{source}: members that cannot be extracted safely", problems=problems)
    return chosen


def _collection_info(wheel: zipfile.ZipFile, name: str, source: Path) -> dict:
    member = f"{TREE}/{name.replace('.', '/')}/MANIFEST.json"
    try:
        info = json.loads(wheel.read(member))["collection_info"]
    except KeyError:
        raise NotFound(f"{source}: holds no collection {name} (no {member})") from None
    except (ValueError, TypeError) as exc:
        raise IntegrityFailure(f"{source}: {member} is not a collection manifest ({exc})") from None
    if f"{info.get('namespace')}.{info.get('name')}" != name or not isinstance(info.get("version"), str):
        raise IntegrityFailure(f"{source}: {member} describes {info.get('namespace')}.{info.get('name')} "
                               f"{info.get('version')!r}, not a version of {name}")
    return info


def _write(wheel: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path) -> None:
    target = root / info.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    # Plain files only: a collection's modules are copied to a host and run by its Python, never executed here.
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


def vendor_collections(wheel_path: Path, names: list[str], dest: Path, *, lock_path: Path) -> list[dict]:
    """Replace `dest` with `dest/ansible_collections/NS/NAME/**` of each named collection, taken from
    the wheel once its sha256 is the one `lock_path` locks; nothing else is written. A collection
    that depends on one not listed is refused: offline, nothing could supply it.
    [{name, version, path (under dest), files, source: {name, version, sha256, file}}] by name."""
    wheel_path, dest = Path(wheel_path), Path(dest)
    source = check_wheel(wheel_path, lock_path)
    bad = [name for name in names if not NAME.match(name)]
    if bad or not names:
        raise InvalidInput(f"collections to vendor: {', '.join(bad) or 'none given'}: expected namespace.name")
    with zipfile.ZipFile(wheel_path) as wheel:
        members = _members(wheel, names, wheel_path)
        infos = {name: _collection_info(wheel, name, wheel_path) for name in names}
        missing = [f"{name} needs {dep} {spec}, which {NAMES} does not list"
                   for name, info in infos.items() for dep, spec in sorted((info.get("dependencies") or {}).items())
                   if dep not in names]
        if missing:
            raise InvalidInput("the playbooks' collections are not complete", problems=missing)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
        try:
            for name in names:
                for info in members[name]:
                    _write(wheel, info, fresh)
            os.chmod(fresh, 0o755)
            _replace(fresh, dest)
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
    return [{"name": name, "version": infos[name]["version"], "path": f"{TREE}/{name.replace('.', '/')}",
             "files": len(members[name]), "source": source} for name in sorted(names)]


def vendored(wheel_path: Path, names: list[str], dest: Path) -> bool:
    """Whether `dest` holds exactly what vendoring these collections would write, byte for byte."""
    dest = Path(dest)
    if not (dest / TREE).is_dir():
        return False
    on_disk = set()
    for path in dest.rglob("*"):
        if path.is_symlink():
            return False
        if not path.is_dir():
            on_disk.add(path.relative_to(dest).as_posix())
    with zipfile.ZipFile(wheel_path) as wheel:
        expected = {info.filename: info for infos in _members(wheel, names, wheel_path).values() for info in infos}
        if on_disk != set(expected):
            return False
        return all((dest / name).read_bytes() == wheel.read(info) for name, info in expected.items())


def cached_wheel(lock_path: Path, cache_dir: Path) -> Path | None:
    """The locked wheel in `cache_dir` when one is there with the locked sha256."""
    locked = read_lock(lock_path)
    for path in sorted(Path(cache_dir).glob(f"{locked['name']}-{locked['version']}-*.whl")):
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

    # The collections' wheel is pure Python: any target's tags pick the same file.
    (wheel,) = fetch_wheels(lock_path, Path(cache_dir), target="cpu")
    return Path(wheel["path"])


def vendor_locked(repo: Path, dest: Path, cache_dir: Path) -> tuple[list[dict], bool]:
    """The checkout's locked collections in `dest`, fetched into `cache_dir` when not cached; left as
    they are when `dest` already holds them. (what is vendored, whether anything was written)."""
    lock_path, names = repo / LOCK, read_names(repo / NAMES)
    wheel = fetch(lock_path, cache_dir)
    if vendored(wheel, names, dest):
        return [], False
    return vendor_collections(wheel, names, dest, lock_path=lock_path), True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m airlock.bundle.collections",
                                description=f"Vendor the collections of {NAMES} from the wheel {LOCK} locks.")
    p.add_argument("--repo", type=Path, default=Path("."), help="the checkout (default: .)")
    p.add_argument("--dest", type=Path, help=f"default: REPO/{VENDORED}")
    p.add_argument("--cache", type=Path, required=True, help="a folder of its own for the downloaded wheel")
    args = p.parse_args(argv)
    dest = args.dest or args.repo / VENDORED
    try:
        done, written = vendor_locked(args.repo, dest, args.cache)
    except AirlockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if not written:
        print(f"{dest}: collections up to date")
    for c in done:
        print(f"{dest}: {c['name']} {c['version']} ({c['files']} files) from {c['source']['file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
