"""Writing a file in one step: readers see the old bytes or the new, never half of them.

Standard library only, so the pinned trust root can be written by the stand-alone installer too.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int, *, exclusive: bool = False) -> bool:
    """Write `data` to `path` with `mode`; with `exclusive`, never replace an existing file.

    Returns False when `exclusive` and the file already existed (another process won the race).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # mkstemp creates 0600; fchmod makes the final mode independent of the umask.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            # link() fails when the name exists: two writers cannot both believe they created it.
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            # A filesystem without hard links (removable media): a rename is atomic, only not exclusive.
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
