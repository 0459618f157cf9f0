"""Small real wheels and sdists for the lock and wheel tests, and a pip that sees only them.

The wheels are valid zip files with METADATA, WHEEL and RECORD, so pip reads their requirements
and installs them like any other; `only_local_index` points the real pip subprocess at a folder of
them instead of any configured index.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
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
