"""A backup is a folder that holds everything an appliance needs to come back elsewhere:

    DIR/backup.json     what the backup holds: every file with its size, sha256 and mode, the schema
                        version, the store backend and its references, the audit log's head hash
    DIR/airlock.db      SQLite's online backup: one consistent snapshot, taken while services write
    DIR/keys/           the appliance's signing key (adapter manifests are signed with it)
    DIR/trust/          the pinned trust root, where one is pinned
    DIR/store/          the artifact store, when it is the local folder (content-addressed blobs and
                        references); an S3 store stays in its bucket, and only its references and
                        the blobs they name are recorded and checked again at restore

Restore verifies before it writes: every file's size and digest, the set of files equal to the
listed set, the database's own integrity check and audit chain, the S3 store still holding every
blob the references name. Problems are collected and reported together. It never merges into or
overwrites a home: the restored home is assembled beside the target and renamed into place; an
existing home is refused, or with `replace` moved aside first, so nothing is lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from airlock import __version__
from airlock.config import Settings
from airlock.errors import IntegrityFailure, InvalidInput, NotFound, NotReady
from airlock.home import appliance_pid_from, lock_path
from airlock.meta import open_meta
from airlock.meta.audit import verify as verify_audit
from airlock.private import make_private_dir
from airlock.store import open_store
from airlock.trust.atomic import write_atomic
from airlock.trust.pinned import ROOT_FILE

FORMAT = "airlock.backup/v1"
MANIFEST = "backup.json"
DB = "airlock.db"
SECRET_MODE = 0o600  # a backup holds the appliance's private keys


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _listing(root: Path) -> dict[str, dict]:
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        st = path.lstat()
        files[path.relative_to(root).as_posix()] = {"size": st.st_size, "sha256": _sha256(path),
                                                    "mode": f"{st.st_mode & 0o777:04o}"}
    return files


def _copy_tree(src: Path, dest: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=False, ignore=shutil.ignore_patterns("*.tmp", ".*.tmp"))


def create_backup(settings: Settings, out: Path, *, trust_dir: Path | None, actor: str,
                  now: datetime | None = None) -> dict:
    """Write a backup of `settings.home` into `out` (new or empty); returns its manifest."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InvalidInput(f"{out}: not empty; a backup goes into a new or empty folder")
    if not settings.db_path.is_file():
        raise NotFound(f"{settings.db_path}: no appliance database to back up (AIRLOCK_HOME={settings.home})")
    meta = open_meta(settings.db_path)
    head = meta.one("SELECT hash FROM audit ORDER BY id DESC LIMIT 1")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    staging = Path(tempfile.mkdtemp(prefix=".backup-", dir=out))
    try:
        # The online backup API copies a consistent snapshot page by page while writers go on.
        with closing(sqlite3.connect(settings.db_path)) as source, closing(sqlite3.connect(staging / DB)) as target:
            source.backup(target)
        _copy_tree(settings.keys_dir, staging / "keys")
        if trust_dir is not None and (trust_dir / ROOT_FILE).is_file():
            _copy_tree(trust_dir, staging / "trust")
        store = {"backend": settings.store_backend}
        if settings.store_backend == "local":
            _copy_tree(settings.store_dir, staging / "store")
        else:
            store.update(endpoint=settings.s3_endpoint, bucket=settings.s3_bucket,
                         refs=open_store(settings).list_refs())
        for path in staging.rglob("*"):
            os.chmod(path, 0o700 if path.is_dir() else SECRET_MODE)
        manifest = {"format": FORMAT, "airlock_version": __version__,
                    "created": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
                    "schema_version": meta.schema_version(), "audit_head": head["hash"] if head else None,
                    "store": store, "files": _listing(staging)}
        for entry in staging.iterdir():
            entry.rename(out / entry.name)
        write_atomic(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode(), SECRET_MODE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    meta.audit(actor, "backup.create", str(out.name), files=len(manifest["files"]), audit_head=manifest["audit_head"])
    return manifest


def read_manifest(backup: Path) -> dict:
    path = Path(backup) / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise NotFound(f"{path}: missing; {backup} is not an airlock backup") from None
    except ValueError as exc:
        raise IntegrityFailure(f"{path}: not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IntegrityFailure(f"{path}: not an {FORMAT} manifest")
    return manifest


def check_files(backup: Path, manifest: dict) -> list[str]:
    """Every difference between the folder and its manifest, each naming the file."""
    listed, problems = manifest.get("files") or {}, []
    present = {p.relative_to(backup).as_posix() for p in backup.rglob("*")
               if p.is_file() and p.name != MANIFEST and not p.is_symlink()}
    links = [p.relative_to(backup).as_posix() for p in backup.rglob("*") if p.is_symlink()]
    problems += [f"{rel}: a symbolic link; a backup holds regular files only" for rel in links]
    problems += [f"{rel}: missing (listed in {MANIFEST})" for rel in sorted(set(listed) - present)]
    problems += [f"{rel}: not listed in {MANIFEST} (added after the backup)" for rel in sorted(present - set(listed))]
    for rel in sorted(present & set(listed)):
        path, entry = backup / rel, listed[rel]
        size = path.stat().st_size
        if size != entry["size"]:
            problems.append(f"{rel}: {size} bytes, the backup recorded {entry['size']}")
        elif (digest := _sha256(path)) != entry["sha256"]:
            problems.append(f"{rel}: sha256 {digest}, the backup recorded {entry['sha256']} (its content changed)")
    return problems


def _check_database(db: Path, manifest: dict) -> list[str]:
    """SQLite's own integrity check and the audit chain (up to the head recorded at backup) of a copy."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    if result != "ok":
        return [f"{DB}: SQLite's integrity check failed: {result}"]
    meta = open_meta(db)
    try:
        report = verify_audit(meta, head=manifest.get("audit_head"))
    finally:
        meta.db.conn.close()
    return [f"{DB}: audit log: {p.message}" for p in report.problems]


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


def restore_backup(settings: Settings, backup: Path, *, trust_dir: Path | None, actor: str, replace: bool = False,
                   now: datetime | None = None) -> dict:
    """Verify the backup in full, then make it `settings.home`; returns what was done."""
    backup, home = Path(backup), Path(settings.home)
    manifest = read_manifest(backup)
    problems = check_files(backup, manifest) + _check_s3(settings, manifest.get("store") or {})
    if problems:
        raise IntegrityFailure(f"{backup}: refused, nothing was restored", problems=problems)
    if (pid := appliance_pid_from(lock_path(settings))) is not None:
        raise NotReady(f"an appliance runs on {home} (pid {pid}); stop it (`airlock down`) before restoring")
    moved_aside = None
    if home.exists() and any(home.iterdir()):
        if not replace:
            raise InvalidInput(f"{home}: already holds an appliance's data; restore into a new AIRLOCK_HOME, "
                               "or pass --replace to move it aside first (nothing is deleted)")
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        moved_aside = home.with_name(f"{home.name}.before-restore-{stamp}")
    home.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{home.name}.restoring-", dir=home.parent))
    try:
        for rel in manifest["files"]:
            if rel.startswith("trust/"):
                continue  # the pinned root has its own place, and its own rule
            make_private_dir((staging / rel).parent)
            shutil.copy2(backup / rel, staging / rel)
        # What was copied is checked once more where it lies, against the same manifest.
        copied = {k: v for k, v in manifest["files"].items() if not k.startswith("trust/")}
        late = check_files(staging, {"files": copied})
        if not late and DB in copied:
            late = _check_database(staging / DB, manifest)  # on the copy: opening a database may write to it
        if late:
            raise IntegrityFailure(f"{backup}: refused, nothing was restored", problems=late)
        # A development home pins its root inside itself; an installed release in PREFIX/trust.
        inside = trust_dir is not None and trust_dir.resolve().is_relative_to(home.resolve())
        _restore_trust(backup / "trust", staging / trust_dir.resolve().relative_to(home.resolve()) if inside
                       else trust_dir)
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
    open_meta(settings.db_path).audit(actor, "backup.restore", backup.name, files=len(manifest["files"]),
                                      moved_aside=moved_aside.name if moved_aside else None)
    return {"home": str(home), "files": len(manifest["files"]), "moved_aside": str(moved_aside) if moved_aside else None,
            "created": manifest.get("created")}
