"""The adapter copies vLLM reads: written only here, verified on disk, read-only, re-made per load.

vLLM reads an adapter from a path, so what it loads is whatever lies there at that moment. Every
load therefore starts from the signed manifest: the files are copied out of the store into a new
folder, each copy is hashed again as it lies on disk, made read-only, and only then handed to
vLLM. A copy someone replaced after an earlier load is never reused.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from pathlib import Path

from airlock.context import Airlock
from airlock.errors import IntegrityFailure
from airlock.promotion.signing import verify_model
from airlock.serve.engine import EngineClient


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def _remove(folder: Path) -> None:
    """Remove a read-only copy (its folders are 0500, so write access is given back first)."""
    if not folder.exists():
        return
    for root, dirs, _ in os.walk(folder):
        os.chmod(root, 0o700)
        for d in dirs:
            os.chmod(Path(root) / d, 0o700)
    shutil.rmtree(folder, ignore_errors=True)


def materialize(airlock: Airlock, model_id: str, manifest: dict) -> Path:
    """A fresh, verified, read-only copy of the adapter's files; older copies are removed."""
    serving = airlock.settings.serving_dir
    serving.mkdir(parents=True, exist_ok=True)
    for old in serving.glob(f"{model_id}*"):
        _remove(old)
    dest = serving / f"{model_id}.{secrets.token_hex(4)}"
    problems = []
    for rel, entry in manifest["files"].items():
        target = airlock.store.get_file(entry["sha256"], dest / rel)
        if _sha256(target) != entry["sha256"]:
            problems.append(f"{rel}: the copy on disk does not hash to the signed digest")
        target.chmod(0o400)
    if problems:
        _remove(dest)
        raise IntegrityFailure(f"model {model_id}: the serving copy does not match its manifest", problems=problems)
    for root, dirs, _ in os.walk(dest, topdown=False):
        for d in dirs:
            os.chmod(Path(root) / d, 0o500)
    dest.chmod(0o500)
    return dest


def verified_copy(airlock: Airlock, model_id: str) -> Path:
    """Verify the signed manifest and the stored bytes, and make the copy an engine loads."""
    return materialize(airlock, model_id, verify_model(airlock, model_id))


def load_verified(airlock: Airlock, client: EngineClient, model_id: str) -> Path:
    """Verify the signed manifest and the stored bytes, copy, and load into the engine."""
    path = verified_copy(airlock, model_id)
    client.load_adapter(model_id, path)
    return path
