"""The payload tree of a bundle being built: models copied and checked, every file listed, one tar.

The tar is deterministic (sorted names, owner 0, a fixed time, modes from the manifest) so the same
inputs give the same bytes, and holds only regular files: directories are implied by the paths,
which is also all the extractor accepts.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

from airlock.bundle.extract import safe_relpath
from airlock.errors import InvalidInput

# Weight formats that can run code when loaded (pickle and its relatives); a bundle carries none.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5", ".msgpack"}


def copy_models(models_dir: Path, names: list[str], dest: Path) -> list[dict]:
    """Copy the chosen model folders, safetensors weights only; a summary per model."""
    summaries = []
    for name in names:
        src = models_dir / name
        if not (src / "config.json").is_file():
            raise InvalidInput(f"model {name!r}: {src} has no config.json (models come from {models_dir})")
        refused = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
        if refused:
            raise InvalidInput(f"model {name!r}: files in a pickle-based format cannot be bundled: "
                               f"{', '.join(refused)}; convert them to safetensors")
        weights = sorted(src.rglob("*.safetensors"))
        if not weights:
            raise InvalidInput(f"model {name!r}: {src} holds no .safetensors weights")
        shutil.copytree(src, dest / name, symlinks=False)
        summaries.append({"name": name, "files": sum(1 for p in (dest / name).rglob("*") if p.is_file()),
                          "bytes": sum(p.stat().st_size for p in (dest / name).rglob("*") if p.is_file())})
    return summaries


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_entries(root: Path) -> dict[str, dict]:
    """Every file under `root` by relative POSIX path: size, sha256 and mode (0755 if executable)."""
    entries = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"payload {rel!r}: only regular files can be bundled (links and devices cannot)")
        reason = safe_relpath(rel)
        if reason:
            raise InvalidInput(f"payload {rel!r}: {reason}")
        entries[rel] = {"size": st.st_size, "sha256": sha256_file(path),
                        "mode": "0755" if st.st_mode & stat.S_IXUSR else "0644"}
    return entries


def write_tar(root: Path, files: dict[str, dict], out: BinaryIO) -> None:
    """Stream a tar of exactly `files` (as listed) to `out`, no seeking."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel, entry in sorted(files.items()):
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = entry["size"], int(entry["mode"], 8), 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with (root / rel).open("rb") as f:
                tar.addfile(info, f)
