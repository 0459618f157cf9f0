"""Which TCP ports a process listens on, and on which address, as `ss` reports them."""

from __future__ import annotations

import re
import subprocess


def listening(pids: set[int] | None = None) -> list[tuple[str, int, int | None]]:
    """(address, port, pid) of every listening TCP socket, of these processes only when given."""
    out = subprocess.run(["ss", "-H", "-l", "-t", "-n", "-p"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        address, _, port = fields[3].rpartition(":")
        owners = [int(p) for p in re.findall(r"pid=(\d+)", line)] or [None]
        found += [(address.strip("[]"), int(port), pid) for pid in owners if pids is None or pid in pids]
    return found
