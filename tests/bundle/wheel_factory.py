"""Small real wheels and sdists for the lock and wheel tests, and a pip that sees only them;
small zips, locks and altered copies for the vendoring tests (collections, web assets).

The wheels are valid zip files with METADATA, WHEEL and RECORD, so pip reads their requirements
and installs them like any other; `only_local_index` points the real pip subprocess at a folder of
them instead of any configured index.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from airlock.bundle.payload import sha256_file


def make_wheel(folder: Path, name: str, version: str, tag: str = "py3-none-any",
               requires: tuple[str, ...] = (), extras: tuple[str, ...] = (), payload: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    metadata = "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                        *(f"Provides-Extra: {e}\n" for e in extras), *(f"Requires-Dist: {r}\n" for r in requires)])
    files = {
        f"{dist}/__init__.py": f"VERSION = {version!r}\n{payload}",
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    record = []
    for member, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{member},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    path = folder / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in files.items():
            zf.writestr(member, text)
    return path


def make_sdist(folder: Path, name: str, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}.tar.gz"
    setup = b"from setuptools import setup\nsetup()\n"
    with tarfile.open(path, "w:gz") as tar:
        member = tarfile.TarInfo(f"{name}-{version}/setup.py")
        member.size = len(setup)
        tar.addfile(member, io.BytesIO(setup))
    return path


def small_wheel(path: Path, members: dict[str, bytes], *, links: tuple[str, ...] = ()) -> Path:
    """A zip of just these members (and symbolic links to /etc/passwd), for the vendoring tests."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, "/etc/passwd")
    return path


def one_wheel_lock(path: Path, name: str, wheel: Path) -> Path:
    """A lock of the vendoring kind (airlock.bundle.locked_wheel) pinning `wheel` as NAME 1.0."""
    path.write_text(f"# a test lock\n{name}==1.0 --hash=sha256:{sha256_file(wheel)}\n")
    return path


def flipped_copy(wheel: Path, folder: Path) -> Path:
    """A copy of `wheel` under its own name with the byte in its middle inverted."""
    changed = folder / wheel.name
    shutil.copy2(wheel, changed)
    with changed.open("r+b") as f:
        f.seek(changed.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    return changed


def cache_holding(wheel: Path, folder: Path) -> Path:
    """`folder`/cache, a wheel cache of the vendoring kind holding a copy of `wheel`."""
    cache = folder / "cache"
    cache.mkdir()
    shutil.copy2(wheel, cache / wheel.name)
    return cache


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def lock_line(name: str, version: str, *wheels: Path) -> str:
    return f"{name}=={version} " + " ".join(f"--hash=sha256:{sha256_file(w)}" for w in wheels)


def only_local_index(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """The pip subprocesses of this test see `folder` and nothing else: no configured index,
    mirror, find-links folder or constraint of this host."""
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
