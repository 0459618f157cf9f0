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

import json
import re
import sys
import zipfile
from pathlib import Path

from airlock.bundle.locked_wheel import (check_wheel, command_line, fetch, file_members, holds_exactly,
                                         meaningful_lines, write_members)
from airlock.errors import IntegrityFailure, InvalidInput, NotFound

LOCK = Path("wheels") / "collections.lock"
NAMES = Path("playbooks") / "collections.txt"
VENDORED = Path("playbooks") / "collections"  # what playbooks/ansible.cfg names as collections_path
TREE = "ansible_collections"
# Galaxy's rule for namespaces and names: lower case, digits and '_', not starting with either of the last two.
NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")


def read_names(path: Path) -> list[str]:
    """The collections listed in `path`, one `namespace.name` a line."""
    names, problems = [], []
    for number, line in meaningful_lines(path, "the collections the playbooks use"):
        if not NAME.match(line):
            problems.append(f"line {number}: {line!r} is not namespace.name")
        elif line in names:
            problems.append(f"line {number}: {line} is listed twice")
        else:
            names.append(line)
    if problems or not names:
        raise InvalidInput(f"{path}: not a list of collections", problems=problems or ["no collection listed"])
    return names


def _members(wheel: zipfile.ZipFile, names: list[str], source: Path) -> dict[str, list[zipfile.ZipInfo]]:
    """Each collection's file members; any unsafe member anywhere refuses the whole wheel."""
    prefixes = {name: f"{TREE}/{name.replace('.', '/')}/" for name in names}
    chosen: dict[str, list[zipfile.ZipInfo]] = {name: [] for name in names}
    for path, info in file_members(wheel, source).items():
        for name, prefix in prefixes.items():
            if path.startswith(prefix):
                chosen[name].append(info)
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
        write_members(wheel, {info.filename: info for name in names for info in members[name]}, dest)
    return [{"name": name, "version": infos[name]["version"], "path": f"{TREE}/{name.replace('.', '/')}",
             "files": len(members[name]), "source": source} for name in sorted(names)]


def vendored(wheel_path: Path, names: list[str], dest: Path) -> bool:
    """Whether `dest` holds exactly what vendoring these collections would write, byte for byte."""
    with zipfile.ZipFile(wheel_path) as wheel:
        chosen = {info.filename: info for infos in _members(wheel, names, wheel_path).values() for info in infos}
        return holds_exactly(Path(dest), wheel, chosen)


def vendor_locked(repo: Path, dest: Path, cache_dir: Path) -> tuple[list[dict], bool]:
    """The checkout's locked collections in `dest`, fetched into `cache_dir` when not cached; left as
    they are when `dest` already holds them. (what is vendored, whether anything was written)."""
    lock_path, names = repo / LOCK, read_names(repo / NAMES)
    wheel = fetch(lock_path, cache_dir)
    if vendored(wheel, names, dest):
        return [], False
    return vendor_collections(wheel, names, dest, lock_path=lock_path), True


def _vendor_and_report(repo: Path, dest: Path, cache_dir: Path) -> list[str]:
    done, written = vendor_locked(repo, dest, cache_dir)
    if not written:
        return [f"{dest}: collections up to date"]
    return [f"{dest}: {c['name']} {c['version']} ({c['files']} files) from {c['source']['file']}" for c in done]


def main(argv: list[str] | None = None) -> int:
    return command_line(argv, prog="python -m airlock.bundle.collections", default_dest=VENDORED,
                        description=f"Vendor the collections of {NAMES} from the wheel {LOCK} locks.",
                        vendor=_vendor_and_report)


if __name__ == "__main__":
    sys.exit(main())
