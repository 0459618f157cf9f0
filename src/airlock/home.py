"""One appliance per home: an exclusive flock on `run/appliance.lock`, held by `airlock up`.

The lock, not a pid file, says whether an appliance runs: the kernel drops it when its holder
exits, however it exits, so a stale file never makes `airlock down` signal a process that merely
reuses an old pid. The holder writes its pid into the locked file for others to read.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from airlock.config import Settings
from airlock.errors import NotReady
from airlock.private import make_private_dir, open_private


def lock_path(settings: Settings) -> Path:
    return settings.run_dir / "appliance.lock"


class HomeLock:
    def __init__(self, settings: Settings) -> None:
        self.path = lock_path(settings)
        self.fd: int | None = None

    def acquire(self) -> None:
        make_private_dir(self.path.parent)
        fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = appliance_pid_from(self.path)
            raise NotReady(f"an appliance already runs on {self.path.parent.parent}"
                           f"{f' (pid {holder})' if holder else ''}; `airlock down` stops it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def appliance_pid_from(path: Path) -> int | None:
    """The pid of the process holding the lock at `path`, or None when nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # we got the lock: nobody holds it, whatever pid the file names
    finally:
        os.close(fd)


def appliance_pid(settings: Settings) -> int | None:
    return appliance_pid_from(lock_path(settings))
