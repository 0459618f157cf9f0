"""The payload's parts: one tar split into media-sized files, each with its size and sha256.

Building writes the parts in one pass, hashing as it goes. Verifying checks every part before a
byte of the payload is read, hashing the parts on all cores. Reading streams them back in order as
one payload and hashes them again on the way, so a part swapped after it was verified is still
caught (time of check against time of use).

Standard library only: the stand-alone verifier, run by a bare `python3`, imports this module.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from airlock.errors import AirlockError, IntegrityFailure, InvalidInput

MIB = 1 << 20
# Large reads: hashlib releases the GIL on buffers this big, and removable media likes long reads.
BLOCK = 4 * MIB
PREFIX = "payload.tar.part"
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
SIZE_TEXT = re.compile(r"^(\d+)\s*(?:([KMGT])(?:i?B)?)?$", re.IGNORECASE)


def human_bytes(count: int) -> str:
    """A byte count as an operator reads it: binary units, one decimal."""
    if count < 1024:
        return f"{count} B"
    size, unit = float(count), "B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        size /= 1024
        if size < 1024:
            break
    return f"{size:.1f} {unit}"


def parse_size(text: str, *, minimum: int = MIB) -> int:
    """`--part-size`: bytes, or a number with K, M, G or T (all binary: 700M is 700 MiB)."""
    match = SIZE_TEXT.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise InvalidInput(f"--part-size {text!r}: not a size; give bytes or a number with K, M, G or T "
                           "(binary multiples), like 700M, 4G or 650MiB")
    size = int(match.group(1)) * UNITS[(match.group(2) or "").upper()]
    if size < minimum:
        raise InvalidInput(f"--part-size {text!r}: {human_bytes(size)} is below the smallest part size, "
                           f"{human_bytes(minimum)}")
    return size


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_one(reader: BinaryIO, path: Path, part_size: int, view: memoryview) -> tuple[int, str, bool]:
    """Fill one part from `reader`: its size, its sha256, and whether the reader ran dry."""
    digest, size, ended = hashlib.sha256(), 0, False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)  # the umask must not decide what the media carries
        while size < part_size:
            n = reader.readinto(view[:min(len(view), part_size - size)])
            if not n:
                ended = True
                break
            digest.update(view[:n])
            written = 0
            while written < n:
                written += os.write(fd, view[written:n])
            size += n
        os.fsync(fd)
    finally:
        os.close(fd)
    return size, digest.hexdigest(), ended


def write_parts(reader: BinaryIO, out_dir: Path | str, *, part_size: int, prefix: str = PREFIX) -> list[dict]:
    """Split the stream from `reader` into `{prefix}000`, `{prefix}001`... in `out_dir`, one pass.

    The number of parts is known only at the end, so parts are written under hidden names and
    renamed once the count (and so the digits needed to keep the names in order) is known.
    """
    if part_size < 1:
        raise InvalidInput(f"--part-size {part_size}: a part must hold at least one byte")
    out_dir = Path(out_dir)
    earlier = sorted(p.name for p in out_dir.iterdir() if p.name.startswith(prefix))
    if earlier:
        raise InvalidInput(f"{out_dir}: already holds {earlier[0]} from an earlier build; "
                           "write the bundle into an empty directory")
    view = memoryview(bytearray(min(BLOCK, part_size)))
    made: list[Path] = []
    parts: list[dict] = []
    try:
        while True:
            hidden = out_dir / f".{prefix}{len(parts)}.partial"
            made.append(hidden)
            size, digest, ended = _write_one(reader, hidden, part_size, view)
            if ended and size == 0 and parts:  # the stream ended exactly at a part's end
                hidden.unlink()
                made.pop()
                break
            parts.append({"name": "", "size": size, "sha256": digest})
            if ended:
                break
        width = max(3, len(str(len(parts) - 1)))
        for index, part in enumerate(parts):
            part["name"] = f"{prefix}{index:0{width}d}"
            os.rename(made[index], out_dir / part["name"])
            made[index] = out_dir / part["name"]
        fsync_dir(out_dir)
    except BaseException:
        for path in made:
            path.unlink(missing_ok=True)
        raise
    return parts


def _where(path: Path) -> str:
    return f"bundle part {path.name} ({path})"


def _check_present(path: Path, expected: int) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise IntegrityFailure(f"{_where(path)}: missing; the signed manifest lists it "
                               "(copy every part of the bundle)") from None
    if not stat.S_ISREG(st.st_mode):
        raise IntegrityFailure(f"{_where(path)}: not a regular file")
    if st.st_size != expected:
        how = "truncated" if st.st_size < expected else "longer than signed"
        raise IntegrityFailure(f"{_where(path)}: {st.st_size} bytes, the signed manifest says {expected} ({how})")


def _refuse_extra(bundle_dir: Path, parts: list[dict]) -> None:
    """Part files the manifest does not list: a left-over or a planted part is not silently ignored."""
    listed = {part["name"] for part in parts}
    stems = {re.sub(r"\d+$", "", name) for name in listed}
    extra = sorted(p.name for p in bundle_dir.iterdir()
                   if p.name not in listed and any(p.name.startswith(stem) for stem in stems))
    if extra:
        raise IntegrityFailure(f"{bundle_dir}: part file(s) the signed manifest does not list: {', '.join(extra)}; "
                               "remove them or use the bundle they belong to")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    view = memoryview(bytearray(BLOCK))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            digest.update(view[:n])
    return digest.hexdigest()


def verify_parts(bundle_dir: Path | str, parts: list[dict], *, workers: int | None = None) -> None:
    """Every listed part present with its size and sha256, and no unlisted part beside them."""
    bundle_dir = Path(bundle_dir)
    for part in parts:
        _check_present(bundle_dir / part["name"], part["size"])
    _refuse_extra(bundle_dir, parts)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        digests = list(pool.map(lambda part: _sha256_of(bundle_dir / part["name"]), parts))
    for part, digest in zip(parts, digests, strict=True):
        if digest != part["sha256"]:
            raise IntegrityFailure(f"{_where(bundle_dir / part['name'])}: sha256 {digest}, the signed manifest "
                                   f"says {part['sha256']}; the part is damaged or was altered")


class PartsReader(io.RawIOBase):
    """The parts' bytes in order as one stream, each part hashed again as it is read."""

    def __init__(self, bundle_dir: Path, parts: list[dict]) -> None:
        super().__init__()
        self._dir = bundle_dir
        self._parts = list(parts)
        self._index = -1
        self._file: io.FileIO | None = None
        self._digest = hashlib.sha256()
        self._left = 0
        self._open_next()

    def readable(self) -> bool:
        return True

    def _path(self) -> Path:
        return self._dir / self._parts[self._index]["name"]

    def _open_next(self) -> None:
        self._index += 1
        if self._index >= len(self._parts):
            self._file = None
            return
        try:
            self._file = open(self._path(), "rb", buffering=0)  # noqa: SIM115 - closed at the part's end
        except FileNotFoundError:
            raise IntegrityFailure(f"{_where(self._path())}: removed after it was verified") from None
        except OSError as exc:
            raise AirlockError(f"{_where(self._path())}: cannot be read: {exc.strerror}") from None
        self._digest = hashlib.sha256()
        self._left = self._parts[self._index]["size"]

    def _finish_part(self) -> None:
        """At a part's signed size: nothing may follow, and its bytes must be the verified ones."""
        assert self._file is not None
        grown = self._file.read(1)
        self._file.close()
        self._file = None
        expected = self._parts[self._index]["sha256"]
        if grown:
            raise IntegrityFailure(f"{_where(self._path())}: grew beyond its signed size after it was verified")
        if self._digest.hexdigest() != expected:
            raise IntegrityFailure(f"{_where(self._path())}: changed after it was verified: sha256 "
                                   f"{self._digest.hexdigest()}, the signed manifest says {expected}")

    def readinto(self, buffer: bytearray | memoryview) -> int:
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        while self._file is not None:
            if self._left == 0:
                self._finish_part()
                self._open_next()
                continue
            try:
                n = self._file.readinto(view[:min(len(view), self._left)])
            except OSError as exc:
                raise AirlockError(f"{_where(self._path())}: cannot be read: {exc.strerror}") from None
            if not n:
                raise IntegrityFailure(f"{_where(self._path())}: truncated after it was verified "
                                       f"({self._left} of its signed bytes missing)")
            self._digest.update(view[:n])
            self._left -= n
            return n
        return 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


def open_payload(bundle_dir: Path | str, parts: list[dict]) -> PartsReader:
    """The payload tar, read straight from the parts (no reassembled copy on disk)."""
    return PartsReader(Path(bundle_dir), parts)
