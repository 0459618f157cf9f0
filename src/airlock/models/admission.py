"""Admitting a Hugging Face model folder into the models directory (`airlock models import`).

A recipe read top to bottom: scan the folder; when its layout is sound, copy it into a hidden
sibling of its destination (hashing every byte as it is copied); run every check on that copy,
so what was checked is exactly what is admitted whatever happens to the source meanwhile; record
the provenance; rename the copy into place. A refusal names every problem at once and leaves the
models directory as it was; an import killed half-way leaves only a hidden folder, which the
catalog never lists and the next import of that name removes.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from airlock.errors import InvalidInput
from airlock.models.admission_checks import Limits, Problem, check_contents, scan_folder
from airlock.models.catalog import check_model_name, digest_cache, listing_digest, model_digest
from airlock.models.chat_render import TEMPLATE_MAX_BYTES
from airlock.models.provenance import PROVENANCE_FILE, Provenance, provenance_bytes
from airlock.models.tool_calls import tool_call_parser
from airlock.store.local import fsync_path

Progress = Callable[[str, int, int], None]
TEMPLATE_FILE = "chat_template.jinja"
_CHUNK = 1 << 20
# Model files are read by the engine and the trainer, which may run as other users (containers).
FILE_MODE, DIR_MODE = 0o644, 0o755


@dataclass(frozen=True)
class AdmittedModel:
    name: str
    path: Path
    digest: str
    files: int
    size_bytes: int
    tool_call_parser: str | None
    already_present: bool  # the same model was admitted under this name before: nothing changed


def admit_folder(airlock, source: Path, *, name: str | None = None, chat_template: Path | None = None,
                 actor: str, progress: Progress | None = None, origin: Provenance | None = None) -> AdmittedModel:
    """Check `source` and copy it into the models directory as `name` (default: the folder's
    name); InvalidInput listing every problem when anything is wrong, with nothing admitted.
    `origin`: where the folder came from when it is not what the operator gave (a GGUF file's
    conversion), kept in the provenance record in place of the folder's path."""
    # abspath, not resolve: the name is the folder's as the operator gave it, even through a link.
    settings, source = airlock.settings, Path(os.path.abspath(source))
    if not source.is_dir():
        raise InvalidInput(f"{source} is not a folder: give the Hugging Face model folder to import")
    name = name or source.name
    problems: list[Problem] = []
    try:
        check_model_name(name)
    except InvalidInput as exc:
        problems.append(Problem("--name", exc.message))
    template = _read_template(chat_template, problems)
    limits = Limits.from_settings(settings)
    listing = scan_folder(source, limits)
    problems += listing.problems
    # A folder admitted elsewhere carries its own record; this import writes a new one.
    listing.files.pop(PROVENANCE_FILE, None)
    dest = Path(settings.models_dir) / name
    if problems:
        # Not copied: what the files say is still checked in place, so the refusal is complete.
        if dest.exists():
            problems.append(Problem("--name", f"{name!r} is already taken in {settings.models_dir}"))
        problems += check_contents(source, listing.files, limits, chat_template_given=template is not None)
        raise _refusal(source, name, problems)

    if not dest.parent.is_dir():
        dest.parent.mkdir(parents=True)
        os.chmod(dest.parent, DIR_MODE)
    _remove_abandoned(dest)
    staging = dest.parent / f".{name}.importing-{os.getpid()}"
    lock = _make_staging(staging)
    try:
        hashes = _copy(source, listing.files, staging, limits, progress)
        if template is not None:
            (staging / TEMPLATE_FILE).unlink(missing_ok=True)  # the given template replaces the folder's
            hashes[TEMPLATE_FILE] = _write_file(staging / TEMPLATE_FILE, template)
        if progress:
            progress("checking", 0, 0)
        return _admit_checked_copy(airlock, source, staging, dest, hashes, limits, chat_template, actor, origin)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(lock)


def _admit_checked_copy(airlock, source: Path, staging: Path, dest: Path, hashes: dict[str, str], limits: Limits,
                        chat_template: Path | None, actor: str, origin: Provenance | None) -> AdmittedModel:
    """Check the copy in `staging`; rename it to `dest` with its provenance when every check holds."""
    settings = airlock.settings
    files = {rel: (staging / rel).stat().st_size for rel in hashes}
    problems = check_contents(staging, files, limits)
    digest = listing_digest({rel: {"size": files[rel], "sha256": sha} for rel, sha in hashes.items()})
    if dest.exists():
        existing = model_digest(dest, cache=digest_cache(settings))
        if existing == digest and not problems:
            return _admitted(dest, digest, files, already_present=True)
        problems.append(Problem("--name", f"{dest.name!r} is already taken in {settings.models_dir} by a different "
                                          f"model ({existing}); choose another --name"))
    if problems:
        raise _refusal(source, dest.name, problems)
    record = Provenance(source="folder", imported_from=str(source))
    record.update(origin or {})
    record.update(imported_at=datetime.now(UTC).isoformat(timespec="seconds"), imported_by=actor,
                  files=dict(sorted(hashes.items())))
    if chat_template is not None:
        record["chat_template_from"] = os.path.abspath(chat_template)
    _write_file(staging / PROVENANCE_FILE, provenance_bytes(record))
    _sync_dirs(staging)
    _rename_noreplace(staging, dest)
    fsync_path(dest.parent)
    airlock.meta.audit(actor, "model.imported", dest.name, source=record["imported_from"], digest=digest, files=len(files),
                       bytes=sum(files.values()), chat_template_from=record.get("chat_template_from"))
    return _admitted(dest, digest, files, already_present=False)


def _admitted(dest: Path, digest: str, files: dict[str, int], *, already_present: bool) -> AdmittedModel:
    return AdmittedModel(dest.name, dest, digest, len(files), sum(files.values()), tool_call_parser(dest),
                         already_present)


def _refusal(source: Path, name: str, problems: list[Problem]) -> InvalidInput:
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    return InvalidInput(f"{source} was not imported as {name!r} ({count}; nothing was admitted):",
                        problems=[str(p) for p in problems])


def _read_template(path: Path | None, problems: list[Problem]) -> bytes | None:
    if path is None:
        return None
    where = f"--chat-template {path}"
    try:
        data = Path(path).read_bytes()
        data.decode("utf-8")
    except OSError as exc:
        problems.append(Problem(where, f"cannot be read: {exc.strerror}"))
        return None
    except UnicodeDecodeError as exc:
        problems.append(Problem(where, f"not UTF-8 text: {exc}"))
        return None
    if len(data) > TEMPLATE_MAX_BYTES or not data.strip():
        problems.append(Problem(where, f"{len(data)} bytes: a chat template has 1 to {TEMPLATE_MAX_BYTES}"))
        return None
    return data


def _remove_abandoned(dest: Path) -> None:
    """Copies left by imports of this name that were killed: the lock their process held on the
    copy went with it (see `_copy`), where an import still running holds it."""
    for old in dest.parent.glob(f".{dest.name}.importing-*"):
        fd = os.open(old, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        finally:
            os.close(fd)
        shutil.rmtree(old, ignore_errors=True)


def _make_staging(staging: Path) -> int:
    """Make the hidden copy's folder, locked for as long as the returned descriptor is open: the
    kernel drops the lock when this process dies, however it dies, which marks an abandoned copy."""
    staging.mkdir(mode=DIR_MODE)
    os.chmod(staging, DIR_MODE)
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _copy(source: Path, files: dict[str, int], staging: Path, limits: Limits, progress: Progress | None) -> dict:
    """Copy `files` into `staging`, returning each one's sha256 as copied. Each is opened beneath
    `source` without following a link at any step, so a folder or file swapped for a link after
    the scan (by whoever can write the source) is refused, never followed out of the folder."""
    total, done, hashes = sum(files.values()), 0, {}
    for rel in sorted(files):
        (staging / rel).parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with _open_beneath(source, rel) as src, open(_create(staging / rel), "wb") as out:
            while chunk := src.read(_CHUNK):
                done += len(chunk)
                if done > limits.max_bytes:
                    raise InvalidInput(f"{source / rel} grew while it was copied: the folder now holds more than "
                                       f"{limits.max_bytes} bytes (AIRLOCK_MODEL_IMPORT_MAX_BYTES); nothing was admitted")
                digest.update(chunk)
                out.write(chunk)
                if progress:
                    progress("copying", done, total)
            out.flush()
            os.fsync(out.fileno())
        hashes[rel] = digest.hexdigest()
    for folder in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
        os.chmod(folder, DIR_MODE)
    return hashes


def _open_beneath(root: Path, rel: str):
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        parts = rel.split("/")
        for part in parts[:-1]:
            fds.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fds[-1]))
        # O_NONBLOCK: a file swapped for a pipe must not hang the open; fstat then refuses it.
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fds[-1])
    except OSError as exc:
        raise InvalidInput(f"{root / rel} changed while it was imported ({exc.strerror}); nothing was admitted") from None
    finally:
        for d in fds:
            os.close(d)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidInput(f"{root / rel} changed while it was imported (no longer a regular file); nothing was admitted")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _create(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # the importer's umask (owner-only) must not hide it from the engine
    return fd


def _write_file(path: Path, data: bytes) -> str:
    with open(_create(path), "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    return hashlib.sha256(data).hexdigest()


def _sync_dirs(staging: Path) -> None:
    for folder in [*(p for p in staging.rglob("*") if p.is_dir()), staging]:
        fsync_path(folder)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename, never replacing `dst`: a plain rename silently replaces an empty folder, and a
    second import of the same name may have won the race since the check."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EEXIST, errno.ENOTEMPTY):
        raise InvalidInput(f"{dst} appeared while the model was imported (another import?); nothing was admitted")
    if err not in (errno.ENOSYS, errno.EINVAL):  # a kernel or filesystem without it: check, then rename
        raise OSError(err, os.strerror(err), str(dst))
    if dst.exists():
        raise InvalidInput(f"{dst} appeared while the model was imported (another import?); nothing was admitted")
    os.rename(src, dst)
