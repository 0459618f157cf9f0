"""Another local user for the attack tests: `nobody`, with none of root's groups (the tests run as root)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534


def as_nobody(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True,
                          text=True, timeout=timeout)


@contextmanager
def open_folder(prefix: str) -> Iterator[Path]:
    """A folder every user can enter (0755), as /var/lib or a home's parent is: pytest's own
    tmp_path is 0700, which would keep `nobody` out whatever lies inside."""
    if os.geteuid() != 0:
        raise RuntimeError("needs root: the test acts as another user (nobody)")
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)
