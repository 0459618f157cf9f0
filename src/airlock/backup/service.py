"""A backup is one sealed file (seal.py: encrypted and authenticated as a whole with a key from
the operator's passphrase) holding a tar archive of everything an appliance needs to come back:

    airlock.db          SQLite's online backup: one consistent snapshot, taken while services write
    audit/anchors.jsonl the audit log's signed anchors (meta/anchor.py), copied before the snapshot
    keys/               the appliance's signing key (adapter manifests and audit anchors are signed with it)
    trust/              the pinned trust root, where one is pinned
    store/              the artifact store, when it is the local folder (content-addressed blobs and
                        references); an S3 store stays in its bucket, and only its references and
                        the blobs they name are recorded and checked again at restore
    backup.json         last: every file with its size and sha256, the schema version, the store
                        backend and its references, the audit log's head hash

No byte of it, the private key least of all, is on disk in the clear. Restore unpacks only bytes
that authenticated, into a private folder beside the home that is deleted on any failure; then
it checks the listing, SQLite's integrity, the audit chain and its anchors, and the S3 store's
blobs, collecting every problem. It never merges into or overwrites a home: the restored home is
renamed into place; an existing home is refused, or with `replace` moved aside first.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from airlock import __version__
from airlock.backup.seal import FORMAT, SealedReader, SealedWriter
from airlock.config import Settings
from airlock.errors import IntegrityFailure, InvalidInput, NotFound, NotReady
from airlock.home import appliance_pid_from, lock_path
from airlock.meta import open_meta
from airlock.meta.anchor import KEY_NAME, Anchors
from airlock.meta.audit import check_anchors, verify as verify_audit
from airlock.store import open_store
from airlock.trust.atomic import write_atomic
from airlock.trust.pinned import ROOT_FILE

MANIFEST = "backup.json"
DB = "airlock.db"
ANCHORS = "audit/anchors.jsonl"


class _Hashing:
    """A file object that hashes what tar reads from it, so each file is read once."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.digest = f, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.digest.update(data)
        return data


def _add(tar: tarfile.TarFile, files: dict, name: str, f: BinaryIO, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(datetime.now(UTC).timestamp())
    hashing = _Hashing(f)
    tar.addfile(info, hashing)
    files[name] = {"size": size, "sha256": hashing.digest.hexdigest()}


def _add_path(tar: tarfile.TarFile, files: dict, name: str, path: Path) -> None:
    with path.open("rb") as f:
        _add(tar, files, name, f, os.fstat(f.fileno()).st_size)  # the size of what is open, not of the name


def _add_bytes(tar: tarfile.TarFile, files: dict, name: str, data: bytes) -> None:
    _add(tar, files, name, io.BytesIO(data), len(data))


def _tree(root: Path) -> Iterator[tuple[str, Path]]:
    """Regular files under `root`, sorted, without the *.tmp files of writes in progress."""
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink() and not path.name.endswith(".tmp"):
                yield path.relative_to(root).as_posix(), path


def create_backup(settings: Settings, out: Path, *, passphrase: bytes, trust_dir: Path | None, actor: str,
                  now: datetime | None = None, chunk_bytes: int | None = None,
                  recipient: X25519PublicKey | None = None) -> dict:
    """Seal a backup of `settings.home` into the new file `out` (also to `recipient`, where given);
    returns its manifest."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise InvalidInput(f"{out}: exists; a backup is written to a new file, never over another")
    if not out.parent.is_dir():
        raise InvalidInput(f"{out.parent}: no such folder for the backup file")
    if not settings.db_path.is_file():
        raise NotFound(f"{settings.db_path}: no appliance database to back up (AIRLOCK_HOME={settings.home})")
    meta = open_meta(settings.db_path, Anchors.for_settings(settings))
    partial = out.with_name(f".{out.name}.partial")
    scratch = Path(tempfile.mkdtemp(prefix=".backup-", dir=settings.home))  # the snapshot stays in the home
    try:
        # Anchors first: each names a row committed before it was written, so all are in the snapshot.
        anchors = settings.audit_anchor_path
        anchor_bytes = anchors.read_bytes() if anchors.is_file() else None
        with closing(sqlite3.connect(settings.db_path)) as source, closing(sqlite3.connect(scratch / DB)) as copy:
            source.backup(copy)  # the online backup API: a consistent snapshot while writers go on
            head = copy.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        files: dict[str, dict] = {}
        store = {"backend": settings.store_backend}
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as sink:
            with SealedWriter(sink, passphrase, recipient=recipient,
                              **({"chunk_bytes": chunk_bytes} if chunk_bytes else {})) as sealed, \
                    tarfile.open(fileobj=sealed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _add_path(tar, files, DB, scratch / DB)
                if anchor_bytes is not None:
                    _add_bytes(tar, files, ANCHORS, anchor_bytes)
                for rel, path in _tree(settings.keys_dir):
                    _add_path(tar, files, f"keys/{rel}", path)
                if trust_dir is not None and (trust_dir / ROOT_FILE).is_file():
                    for path in sorted(trust_dir.glob("*.json")):
                        _add_path(tar, files, f"trust/{path.name}", path)
                if settings.store_backend == "local":
                    for rel, path in _tree(settings.store_dir):
                        _add_path(tar, files, f"store/{rel}", path)
                else:
                    store.update(endpoint=settings.s3_endpoint, bucket=settings.s3_bucket,
                                 refs=open_store(settings).list_refs())
                manifest = {"format": FORMAT, "airlock_version": __version__,
                            "created": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
                            "schema_version": meta.schema_version(), "audit_head": head[0] if head else None,
                            "store": store, "files": dict(files)}
                _add_bytes(tar, files, MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
            sink.flush()
            os.fsync(sink.fileno())
        os.link(partial, out)  # never replaces a file that appeared meanwhile
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    meta.audit(actor, "backup.create", out.name, files=len(manifest["files"]), audit_head=manifest["audit_head"])
    return manifest


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise IntegrityFailure(f"the backup holds no {MANIFEST}: it is not an airlock backup") from None
    except ValueError as exc:
        raise IntegrityFailure(f"the backup's {MANIFEST}: not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IntegrityFailure(f"the backup's {MANIFEST}: not an {FORMAT} manifest")
    return manifest


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_files(root: Path, manifest: dict) -> list[str]:
    """Every difference between the unpacked files and the manifest, each naming the file."""
    listed, problems = manifest.get("files") or {}, []
    present = {rel for rel, _ in _tree(root) if rel != MANIFEST}
    problems += [f"{rel}: missing (listed in {MANIFEST})" for rel in sorted(set(listed) - present)]
    problems += [f"{rel}: not listed in {MANIFEST}" for rel in sorted(present - set(listed))]
    for rel in sorted(present & set(listed)):
        path, entry = root / rel, listed[rel]
        size = path.stat().st_size
        if size != entry["size"]:
            problems.append(f"{rel}: {size} bytes, the backup recorded {entry['size']}")
        elif (digest := _sha256(path)) != entry["sha256"]:
            problems.append(f"{rel}: sha256 {digest}, the backup recorded {entry['sha256']} (its content changed)")
    return problems


def _unpack(reader: SealedReader, dest: Path) -> None:
    """Extract regular files and folders only; every byte tar sees has already authenticated."""
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                if not (member.isreg() or member.isdir()):
                    raise IntegrityFailure(f"{reader.path}: {member.name} is not a regular file or folder")
                # tarfile's extraction filters came with Python 3.11.4; a provisioned host runs
                # Debian 12's 3.11.2, so what the "data" filter would refuse here is checked by
                # hand: a relative path that stays inside `dest`. Modes are set below, owners never.
                if PurePosixPath(member.name).is_absolute() or ".." in PurePosixPath(member.name).parts \
                        or not (dest / member.name).resolve().is_relative_to(dest.resolve()):
                    raise IntegrityFailure(f"{reader.path}: {member.name} would land outside the restored home")
                tar.extract(member, dest, set_attrs=False)
    except tarfile.TarError as exc:
        raise IntegrityFailure(f"{reader.path}: the sealed archive does not read as tar ({exc})") from None
    reader.read_to_end()  # a chunk appended or the last one cut off shows only at the very end
    for path in dest.rglob("*"):
        os.chmod(path, 0o700 if path.is_dir() else 0o600)


def _check_database(root: Path, manifest: dict) -> list[str]:
    """SQLite's own integrity check, the audit chain (up to the head recorded at backup) and its
    anchors, on the unpacked copy: opening a database may write to it."""
    conn = sqlite3.connect(f"file:{root / DB}?mode=ro", uri=True)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    if result != "ok":
        return [f"{DB}: SQLite's integrity check failed: {result}"]
    anchors = Anchors(root / ANCHORS, root / "keys" / KEY_NAME)
    meta = open_meta(root / DB)
    try:
        problems = verify_audit(meta, head=manifest.get("audit_head")).problems
        if ANCHORS in manifest["files"]:
            problems += check_anchors(meta, anchors)
    finally:
        meta.db.conn.close()
    return [f"{DB}: audit log: {p.message}" for p in problems]


def _check_s3(settings: Settings, store: dict) -> list[str]:
    if store.get("backend") != "s3":
        return []
    if settings.store_backend != "s3":
        return [f"the backup's store is S3 ({store.get('endpoint')}, bucket {store.get('bucket')}); this host is "
                "configured for the local store (AIRLOCK_STORE_BACKEND=s3 and its settings are needed)"]
    target = open_store(settings)
    return [f"store reference {name}: its blob {digest} is not in {target!r}"
            for name, digest in sorted((store.get("refs") or {}).items()) if not target.exists(digest)]


def _restore_trust(trust_src: Path, trust_dir: Path | None) -> None:
    if trust_dir is None or not (trust_src / ROOT_FILE).is_file():
        return
    pinned = trust_dir / ROOT_FILE
    if pinned.is_file():
        if pinned.read_bytes() != (trust_src / ROOT_FILE).read_bytes():
            raise IntegrityFailure(f"{pinned}: another trust root is pinned here; a pinned root changes only "
                                   "through rotation (`airlock trust accept`), never by a restore")
        return
    trust_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(trust_src.glob("*.json")):
        write_atomic(trust_dir / path.name, path.read_bytes(), 0o644)


def _place_anchors(staging: Path, home: Path, target: Path, stamp: str) -> None:
    """The backup's anchors go where this host keeps them: inside the home they move with it; a
    file elsewhere (a provisioned host's setting) is moved aside first, never appended to."""
    unpacked = staging / ANCHORS
    if not unpacked.is_file():
        return
    if target.resolve().is_relative_to(home.resolve()):
        inside = staging / target.resolve().relative_to(home.resolve())
        if inside != unpacked:
            inside.parent.mkdir(parents=True, exist_ok=True)
            unpacked.rename(inside)
        return
    if target.exists():
        target.rename(target.with_name(f"{target.name}.before-restore-{stamp}"))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(unpacked, target)


def restore_backup(settings: Settings, backup: Path, *, passphrase: bytes, trust_dir: Path | None, actor: str,
                   replace: bool = False, now: datetime | None = None,
                   identity: X25519PrivateKey | None = None) -> dict:
    """Authenticate and verify the backup in full, then make it `settings.home`; returns what was done."""
    backup, home = Path(backup), Path(settings.home)
    if backup.is_dir():
        raise InvalidInput(f"{backup}: a folder, a backup of an older airlock (airlock.backup/v1) that held the "
                           "private key in the clear and could be edited unseen; it is not restored. Restore it "
                           "with the release that wrote it, then take a sealed backup")
    reader = SealedReader(backup, passphrase, identity)  # a wrong passphrase is refused here, before anything else
    try:
        if (pid := appliance_pid_from(lock_path(settings))) is not None:
            raise NotReady(f"an appliance runs on {home} (pid {pid}); stop it (`airlock down`) before restoring")
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        moved_aside = None
        if home.exists() and any(home.iterdir()):
            if not replace:
                raise InvalidInput(f"{home}: already holds an appliance's data; restore into a new AIRLOCK_HOME, "
                                   "or pass --replace to move it aside first (nothing is deleted)")
            moved_aside = home.with_name(f"{home.name}.before-restore-{stamp}")
        home.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{home.name}.restoring-", dir=home.parent))  # 0700
        try:
            _unpack(reader, staging)
            manifest = read_manifest(staging)
            problems = check_files(staging, manifest) + _check_s3(settings, manifest.get("store") or {})
            if not problems and DB in manifest["files"]:
                problems = _check_database(staging, manifest)
            if problems:
                raise IntegrityFailure(f"{backup}: refused, nothing was restored", problems=problems)
            (staging / MANIFEST).unlink()
            # The pinned root has its own place and its own rule; a development home pins inside itself.
            from_backup = staging.with_name(staging.name + "-trust")
            if (staging / "trust").is_dir():
                (staging / "trust").rename(from_backup)
            inside = trust_dir is not None and trust_dir.resolve().is_relative_to(home.resolve())
            _restore_trust(from_backup, staging / trust_dir.resolve().relative_to(home.resolve()) if inside
                           else trust_dir)
            _place_anchors(staging, home, settings.audit_anchor_path, stamp)
            for folder, _, _ in os.walk(staging):  # every folder here is this restore's own: all private
                os.chmod(folder, 0o700)
            if moved_aside is not None:
                home.rename(moved_aside)
            elif home.exists():
                home.rmdir()  # empty: checked above
            staging.rename(home)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(staging.with_name(staging.name + "-trust"), ignore_errors=True)
    finally:
        reader.close()
    open_meta(settings.db_path, Anchors.for_settings(settings)).audit(
        actor, "backup.restore", backup.name, files=len(manifest["files"]),
        moved_aside=moved_aside.name if moved_aside else None)
    return {"home": str(home), "files": len(manifest["files"]), "moved_aside": str(moved_aside) if moved_aside else None,
            "created": manifest.get("created")}
