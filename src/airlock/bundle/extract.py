"""Safe extraction of a verified payload: only what the signed manifest lists, as it lists it.

The tar is streamed once (no seeking), each file hashed as it is written. Only regular files and
directories pass; a link, a device, a FIFO, a setuid, setgid or sticky bit, a path that could leave
the destination, a name seen twice or one the manifest does not list stops the extraction. Files
are written by hand (never tarfile's extract), into a fresh private directory beside the
destination that is renamed into place only after the last byte checked out; on any failure it is
removed and nothing exists at the destination.

Standard library only: the stand-alone verifier, run by a bare `python3`, imports this module.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from airlock.bundle.parts import fsync_dir
from airlock.errors import AirlockError, IntegrityFailure, InvalidInput, NotFound

CHUNK = 1 << 20
# C0 controls, DEL and C1 controls: never in a file name an operator has to read or type.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
SPECIAL_BITS = {stat.S_ISUID: "setuid", stat.S_ISGID: "setgid", stat.S_ISVTX: "sticky"}


def safe_relpath(name: object) -> str | None:
    """None for a safe relative POSIX path; otherwise the reason it is not one."""
    if not isinstance(name, str):
        return "not a text path"
    if not name:
        return "an empty path"
    if CONTROL.search(name):
        return "a control character in the path"
    if any("\ud800" <= ch <= "\udfff" for ch in name):
        return "bytes that are not UTF-8 in the path"
    if "\\" in name:
        return "a backslash in the path (paths use '/' only)"
    if name.startswith("/"):
        return "an absolute path"
    components = name.split("/")
    if ".." in components:
        return "a path outside the bundle"
    if "." in components:
        return "a '.' component in the path"
    if "" in components:
        return "an empty component in the path (a doubled or trailing '/')"
    if unicodedata.normalize("NFC", name) != name:
        # Decomposed and composed forms print alike, so show the code points too.
        return f"not in Unicode normal form NFC (code points: {name!a})"
    return None


@dataclass(frozen=True)
class Planned:
    size: int
    sha256: str
    mode: int  # 0o755 or 0o644: permission bits only, never setuid/setgid/sticky


def _permissions(mode: object) -> int | None:
    """The manifest's mode ('0644', '0755' or an int) as 0o755/0o644; None if it is not a plain mode."""
    if isinstance(mode, str) and re.fullmatch(r"[0-7]{3,4}", mode):
        mode = int(mode, 8)
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
        return None
    return 0o755 if mode & 0o111 else 0o644


def plan_files(files: dict[str, dict]) -> tuple[dict[str, Planned], frozenset[str]]:
    """The manifest's files map checked with the member rules before anything is written.

    Returns each file's plan and the directories the files imply; every problem at once.
    """
    if not isinstance(files, dict) or not files:
        raise InvalidInput("manifest files: expected a non-empty map of relative path to {size, sha256, mode}")
    problems: list[str] = []
    planned: dict[str, Planned] = {}
    for path, entry in files.items():
        reason = safe_relpath(path)
        if reason:
            problems.append(f"{path!r}: {reason}")
            continue
        entry = entry if isinstance(entry, dict) else {}
        size, digest, mode = entry.get("size"), entry.get("sha256"), _permissions(entry.get("mode"))
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            problems.append(f"{path!r}: size {size!r} is not a byte count")
        elif not isinstance(digest, str) or not HEX64.match(digest):
            problems.append(f"{path!r}: sha256 {digest!r} is not 64 lowercase hex digits")
        elif mode is None:
            problems.append(f"{path!r}: mode {entry.get('mode')!r} is not a plain permission mode like '0644'")
        else:
            planned[path] = Planned(size, digest, mode)
    dirs = frozenset(path.rsplit("/", i)[0] for path in planned for i in range(1, path.count("/") + 1))
    problems += [f"{path!r}: both a file and the directory of other files" for path in sorted(dirs & set(planned))]
    if problems:
        raise InvalidInput("manifest files: cannot be extracted safely", problems=problems)
    return planned, dirs


def _refused_kind(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return f"a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"a hard link (to {member.linkname!r})"
    if member.ischr():
        return "a character device"
    if member.isblk():
        return "a block device"
    if member.isfifo():
        return "a FIFO"
    if member.issparse():
        return "a sparse file"
    if not (member.isreg() or member.isdir()):
        return f"a tar entry of type {member.type!r}"
    return None


def _write_failure(exc: OSError, name: str, dest: Path) -> AirlockError:
    reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return AirlockError(f"unpacking into {dest}: writing {name!r} failed: {reason}; "
                        "the partial unpack was removed and nothing was installed")


class _Extraction:
    """One run: the private directory, what the manifest plans, what has been seen and written."""

    def __init__(self, planned: dict[str, Planned], dirs: frozenset[str], private: Path, dest: Path) -> None:
        self.planned, self.dirs, self.private, self.dest = planned, dirs, private, dest
        self.seen: set[str] = set()
        self.written: set[str] = set()
        self.made_dirs: set[str] = set()

    @contextmanager
    def writing(self, name: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise _write_failure(exc, name, self.dest) from None

    def check(self, member: tarfile.TarInfo) -> None:
        name = member.name
        where = f"payload member {name!r}"
        reason = safe_relpath(name)
        if reason:
            raise IntegrityFailure(f"{where}: {reason}")
        if name in self.seen:
            raise IntegrityFailure(f"{where}: appears twice in the archive (the second would replace the first)")
        kind = _refused_kind(member)
        if kind:
            raise IntegrityFailure(f"{where}: {kind}; only regular files and directories are allowed")
        bits = [label for bit, label in SPECIAL_BITS.items() if member.mode & bit]
        if bits:
            raise IntegrityFailure(f"{where}: mode {member.mode:04o} has the {' and '.join(bits)} bit; "
                                   "only plain permissions are allowed")
        if member.isdir() and name not in self.dirs:
            raise IntegrityFailure(f"{where}: a directory that holds none of the manifest's files")
        if member.isreg() and name not in self.planned:
            raise IntegrityFailure(f"{where}: not listed by the signed manifest")
        if member.isreg() and member.size != self.planned[name].size:
            raise IntegrityFailure(f"{where}: {member.size} bytes, the signed manifest says {self.planned[name].size}")
        self.seen.add(name)

    def make_dirs(self, rel: str) -> None:
        """Create `rel` and its parents (0755) inside the private directory, which holds no links."""
        components = rel.split("/")
        for depth in range(1, len(components) + 1):
            sub = "/".join(components[:depth])
            if sub in self.made_dirs:
                continue
            with self.writing(sub + "/"):
                os.mkdir(self.private / sub, 0o755)
                os.chmod(self.private / sub, 0o755)  # the umask must not decide
            self.made_dirs.add(sub)

    def write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name, plan = member.name, self.planned[member.name]
        if "/" in name:
            self.make_dirs(name.rsplit("/", 1)[0])
        source = tar.extractfile(member)
        assert source is not None  # a regular file always has its bytes
        digest, size = hashlib.sha256(), 0
        with self.writing(name):
            fd = os.open(self.private / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         plan.mode)
        try:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                with self.writing(name):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            with self.writing(name):
                os.fchmod(fd, plan.mode)
                os.fsync(fd)
        finally:
            os.close(fd)
        where = f"payload member {name!r}"
        if size != plan.size:
            raise IntegrityFailure(f"{where}: {size} bytes, the signed manifest says {plan.size}")
        if digest.hexdigest() != plan.sha256:
            raise IntegrityFailure(f"{where}: sha256 {digest.hexdigest()}, the signed manifest says {plan.sha256}; "
                                   "its content differs from what was signed")
        self.written.add(name)

    def run(self, payload: BinaryIO) -> None:
        try:
            with tarfile.open(fileobj=payload, mode="r|", bufsize=CHUNK) as tar:
                for member in tar:
                    self.check(member)
                    if member.isdir():
                        self.make_dirs(member.name)
                    else:
                        self.write_file(tar, member)
        except tarfile.TarError as exc:
            raise IntegrityFailure(f"payload: not a complete tar archive ({exc})") from None
        missing = sorted(set(self.planned) - self.written)
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise IntegrityFailure(f"payload: listed by the signed manifest but not in the archive: {shown}")
        # Read to the payload's very end: a parts reader checks each part's digest as it finishes.
        while payload.read(CHUNK):
            pass
        for sub in sorted(self.made_dirs, key=len, reverse=True):
            with self.writing(sub + "/"):
                fsync_dir(self.private / sub)


def extract_verified(payload: BinaryIO, files: dict[str, dict], dest: Path | str) -> None:
    """Extract the tar streamed from `payload` into `dest` (which must not exist), exactly as `files` lists."""
    dest = Path(dest)
    planned, dirs = plan_files(files)
    if os.path.lexists(dest):
        raise InvalidInput(f"{dest}: already exists; unpack into a path that does not exist yet")
    if not dest.parent.is_dir():
        raise NotFound(f"{dest.parent}: no such directory to unpack {dest.name!r} into")
    try:
        private = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    except OSError as exc:
        raise _write_failure(exc, f".{dest.name}.*.partial/", dest) from None
    try:
        _Extraction(planned, dirs, private, dest).run(payload)
        os.chmod(private, 0o755)
        fsync_dir(private)
        if os.path.lexists(dest):
            raise InvalidInput(f"{dest}: appeared while the bundle was unpacked; nothing was moved there")
        os.rename(private, dest)
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    fsync_dir(dest.parent)
