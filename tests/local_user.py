"""Another local user for the attack tests: `nobody`, with none of root's groups (the tests run as root)."""

from __future__ import annotations

import subprocess

NOBODY = 65534


def as_nobody(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True,
                          text=True, timeout=timeout)
