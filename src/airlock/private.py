"""The appliance's home is private: folders 0700 and files 0600, whatever the umask.

The home holds API key hashes, datasets, adapters and the audit log; a home readable by other
local users hands all of them out. Two layers keep it closed:

- every entry point sets the process umask to 0o077 (`private_umask`), so whatever a library
  creates on its own (SQLite's -wal and -shm files, vLLM's, torch's) is owner-only too;
- every folder and file airlock creates itself gets its mode explicitly (`make_private_dir`,
  `open_private`), because a library or a caller may set another umask.

A home found open to other users is refused (`check_private_tree`), never silently narrowed:
what was readable may already have been read, and the operator has to know that.

Standard library only, so every layer (store, meta, config) may use it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from airlock.errors import NotReady

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
OTHERS = 0o077  # group and other bits: none may be set anywhere in the home


def private_umask() -> None:
    """Owner-only modes for everything this process (and its children) creates from now on."""
    os.umask(OTHERS)


def make_private_dir(path: Path) -> Path:
    """Create `path` and any missing parents 0700; an existing folder is left as it is (the
    check refuses it if it is open)."""
    path = Path(path)
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue  # another process made it first; the check judges its mode
        # mkdir's mode passes through the umask, which may lack owner bits: set it outright.
        os.chmod(folder, PRIVATE_DIR)
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """os.open with mode 0600 forced onto a file this call creates (the umask cannot widen it,
    and a file created earlier by another umask is narrowed: it is airlock's own)."""
    fd = os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE)
    if os.fstat(fd).st_mode & OTHERS:
        os.fchmod(fd, PRIVATE_FILE)
    return fd


def create_private_file(path: Path) -> None:
    """Make `path` exist as an owner-only file before a library opens it by name (SQLite)."""
    os.close(open_private(path, os.O_RDONLY | os.O_CREAT))


def open_mode(path: Path) -> int | None:
    """The group/other bits of `path` (not following a symlink), or None when there are none."""
    mode = os.lstat(path).st_mode
    return stat.S_IMODE(mode) if stat.S_IMODE(mode) & OTHERS and not stat.S_ISLNK(mode) else None


def check_private_tree(home: Path) -> None:
    """Refuse a home whose folder, or any folder under it, other users may read, enter or write.

    Folders are what is walked: a file inside a 0700 folder cannot be reached by anyone else,
    and walking folders stays cheap even for a store of many blobs.
    """
    home = Path(home)
    for folder, subfolders, _ in os.walk(home):
        mode = open_mode(Path(folder))
        if mode is not None:
            raise NotReady(
                f"{folder} is open to other users (mode {mode:04o}): airlock keeps its home {home} private "
                f"(0700 folders, 0600 files) and does not start on one that other local users can read or "
                f"write. What they could read may already have been read; if that is acceptable, close it "
                f"with `chmod -R go-rwx {home}` and start again")
        subfolders.sort()
