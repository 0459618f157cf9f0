"""The folder backend: blobs and refs as plain files under one root.

Layout:
    <root>/blobs/sha256/<first 2 hex>/<64 hex>   read-only blob files (0400; folders 0700)
    <root>/refs/<name>                          one line: the digest the ref points at

Every write goes to a temp file in the destination folder, is fsynced and then renamed over the
target, so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from airlock.errors import IntegrityFailure, InvalidInput, NotFound
from airlock.private import PRIVATE_FILE, make_private_dir
from airlock.store.base import CHUNK, ArtifactStore, check_digest, check_ref_name, sha256_file

# "~" can never appear in a ref name or a blob name, so a temp file left behind by a crash is
# never mistaken for a ref when listing.
TMP_PREFIX = ".~tmp-"
# Blobs never change once written: read-only, and like everything in the home, the owner's alone.
BLOB_MODE = 0o400


def fsync_path(folder: Path) -> None:
    """fsync a file or folder: a rename is only durable once the folder entry is on disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _AtomicWriter:
    """A temp file next to `target`; `commit()` makes it `target`, anything else discards it."""

    def __init__(self, target: Path, mode: int) -> None:
        self.target = target
        self.mode = mode
        make_private_dir(target.parent)
        fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)
        self.tmp = Path(name)
        self.file = os.fdopen(fd, "wb")
        self.committed = False

    def __enter__(self) -> _AtomicWriter:
        return self

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.chmod(self.tmp, self.mode)
        os.replace(self.tmp, self.target)
        self.committed = True
        fsync_path(self.target.parent)

    def __exit__(self, *exc) -> None:
        if not self.file.closed:
            self.file.close()
        if not self.committed:
            self.tmp.unlink(missing_ok=True)


class LocalStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.refs = self.root / "refs"
        make_private_dir(self.blobs)
        make_private_dir(self.refs)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def blob_path(self, digest: str) -> Path:
        hexdigest = check_digest(digest).removeprefix("sha256:")
        return self.blobs / hexdigest[:2] / hexdigest

    # Blobs

    def put_bytes(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            with _AtomicWriter(path, BLOB_MODE) as w:
                w.file.write(data)
                w.commit()
        return digest

    def put_file(self, path: Path) -> str:
        path = Path(path)
        if not path.is_file():
            raise NotFound(f"cannot store {path}: no such file")
        # Hash first: storing a file that is already there then costs one read and no write.
        digest = sha256_file(path)
        if self.blob_path(digest).exists():
            return digest
        # Hash again while copying, so the name always matches the bytes actually stored even
        # if the file changed in between.
        h = hashlib.sha256()
        with open(path, "rb") as src, _AtomicWriter(self.blob_path(digest), BLOB_MODE) as w:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                w.file.write(chunk)
            if "sha256:" + h.hexdigest() != digest:
                raise InvalidInput(f"cannot store {path}: it changed while it was being read")
            w.commit()
        return digest

    def exists(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def _open_blob(self, digest: str):
        path = self.blob_path(digest)
        try:
            return path, open(path, "rb")
        except FileNotFoundError:
            raise NotFound(f"artifact {digest} is not in the store ({path})") from None

    def get_bytes(self, digest: str) -> bytes:
        path, f = self._open_blob(digest)
        with f:
            data = f.read()
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise IntegrityFailure(
                f"artifact {digest} at {path} has changed: it hashes to {actual}"
            )
        return data

    def get_file(self, digest: str, dest: Path) -> Path:
        dest = Path(dest)
        path, f = self._open_blob(digest)
        h = hashlib.sha256()
        with f, _AtomicWriter(dest, PRIVATE_FILE) as w:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                w.file.write(chunk)
            actual = "sha256:" + h.hexdigest()
            if actual != digest:
                raise IntegrityFailure(
                    f"artifact {digest} at {path} has changed: it hashes to {actual}"
                )
            w.commit()
        return dest

    # Refs

    def _ref_path(self, name: str) -> Path:
        path = self.refs / check_ref_name(name)
        # On disk "a//b", "a/./b" and "a/" would alias other names; a name must be its own path.
        if path.relative_to(self.refs).as_posix() != name:
            raise InvalidInput(f"not a valid reference name: {name!r}")
        # A folder-like name ("a/b") and a plain one ("a") cannot both be files on disk.
        for parent in path.relative_to(self.refs).parents:
            if parent != Path(".") and (self.refs / parent).is_file():
                other = parent.as_posix()
                raise InvalidInput(f"reference {name!r} clashes with reference {other!r}")
        if path.is_dir():
            raise InvalidInput(f"reference {name!r} clashes with references under {name + '/'!r}")
        return path

    def set_ref(self, name: str, digest: str) -> None:
        check_digest(digest)
        path = self._ref_path(name)
        if not self.exists(digest):
            raise NotFound(f"cannot point reference {name!r} at {digest}: not in the store")
        with _AtomicWriter(path, PRIVATE_FILE) as w:
            w.file.write((digest + "\n").encode())
            w.commit()

    def _read_ref(self, name: str, path: Path) -> str:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            raise NotFound(f"no reference named {name!r}") from None
        try:
            return check_digest(text)
        except InvalidInput:
            raise IntegrityFailure(f"reference {name!r} at {path} does not hold a digest") from None

    def get_ref(self, name: str) -> str:
        return self._read_ref(name, self._ref_path(name))

    def list_refs(self, prefix: str = "") -> dict[str, str]:
        refs = {}
        for path in sorted(self.refs.rglob("*")):
            name = path.relative_to(self.refs).as_posix()
            if path.is_file() and "~" not in name and name.startswith(prefix):
                refs[name] = self._read_ref(name, path)
        return refs

    def delete_ref(self, name: str) -> None:
        path = self._ref_path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotFound(f"no reference named {name!r}") from None
        # Drop folders the ref leaves empty, so the name is free to become a plain ref again.
        parent = path.parent
        while parent != self.refs:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
