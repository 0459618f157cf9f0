"""The artifact store contract: content-addressed blobs, directory trees and named references.

A digest is always written `sha256:<64 hex>`. Writes are atomic (a reader never sees half a blob)
and every read re-hashes what it returns, so a changed byte anywhere raises IntegrityFailure.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from pathlib import Path

from airlock.errors import IntegrityFailure, InvalidInput

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def check_digest(digest: str) -> str:
    if not DIGEST_RE.match(digest or ""):
        raise InvalidInput(f"not a digest: {digest!r} (expected 'sha256:' and 64 hex digits)")
    return digest


def check_ref_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}", name or "") or ".." in name:
        raise InvalidInput(f"not a valid reference name: {name!r}")
    return name


class ArtifactStore(ABC):
    """What every backend provides. Trees are built on blobs here, once, for all backends."""

    @abstractmethod
    def put_bytes(self, data: bytes) -> str: ...

    @abstractmethod
    def put_file(self, path: Path) -> str: ...

    @abstractmethod
    def get_bytes(self, digest: str) -> bytes: ...

    @abstractmethod
    def get_file(self, digest: str, dest: Path) -> Path: ...

    @abstractmethod
    def exists(self, digest: str) -> bool: ...

    @abstractmethod
    def set_ref(self, name: str, digest: str) -> None: ...

    @abstractmethod
    def get_ref(self, name: str) -> str: ...

    @abstractmethod
    def list_refs(self, prefix: str = "") -> dict[str, str]: ...

    @abstractmethod
    def delete_ref(self, name: str) -> None: ...

    # Directory artifacts (adapters, model folders): an index blob lists every file's digest.

    def put_tree(self, root: Path) -> str:
        files = {}
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            files[rel] = {"sha256": self.put_file(path), "size": path.stat().st_size}
        index = {"kind": "airlock.tree/v1", "files": files}
        return self.put_bytes(json.dumps(index, sort_keys=True, separators=(",", ":")).encode())

    def tree_index(self, digest: str) -> dict[str, dict]:
        try:
            index = json.loads(self.get_bytes(digest))
        except (ValueError, UnicodeDecodeError):
            index = None
        if not isinstance(index, dict) or index.get("kind") != "airlock.tree/v1":
            raise IntegrityFailure(f"artifact {digest} is not a tree index")
        return index["files"]

    def get_tree(self, digest: str, dest: Path) -> Path:
        dest = Path(dest)
        for rel, entry in self.tree_index(digest).items():
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise IntegrityFailure(f"tree {digest} names an unsafe path: {rel!r}")
            self.get_file(entry["sha256"], dest / rel)
        return dest
