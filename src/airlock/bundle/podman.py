"""The container tools the image build drives (podman, debootstrap), their failures as airlock errors.

podman reads its own configuration: on a host whose kernel or privileges differ from its defaults,
CONTAINERS_CONF selects the repository's `images/containers.conf` (docs/bundle.md).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from airlock.errors import AirlockError, InvalidInput

TOOL_TIMEOUT_S = 3600
SUITE = "bookworm"  # Debian 12: its python3 is 3.11, the bundle's Python
MIRROR_ENV = "AIRLOCK_DEBIAN_MIRROR"
APT_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))


class ToolFailed(AirlockError):
    code = "tool_failed"


def require_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise InvalidInput(f"building the service images needs {', '.join(missing)} on this host "
                           f"(Debian: apt-get install {' '.join(missing)}); `--no-images` builds a venv-only bundle")


def run_tool(cmd: list[str], *, what: str, stdin=None, timeout_s: float = TOOL_TIMEOUT_S) -> str:
    """The command's stdout; on failure an error naming `what` with the end of the tool's own words."""
    try:
        done = subprocess.run(cmd, stdin=stdin, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"{what}: {cmd[0]} did not finish within {timeout_s:.0f} s") from None
    except OSError as exc:
        raise ToolFailed(f"{what}: cannot run {cmd[0]}: {exc}") from None
    if done.returncode != 0:
        said = "\n".join((done.stderr + done.stdout).strip().splitlines()[-20:])
        raise ToolFailed(f"{what}: {cmd[0]} failed (exit {done.returncode}):\n{said}")
    return done.stdout


def image_exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag], capture_output=True, check=False).returncode == 0


def _uris(text: str) -> list[str]:
    """Debian mirror URIs serving the suite, from deb822 `.sources` or one-line `sources.list` text."""
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.+)$", stanza, flags=re.M))
        if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
            found += fields.get("URIs", "").split()
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line).split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
            found.append(words[1])
    return found


def debian_mirror(explicit: str | None = None) -> str:
    """The mirror debootstrap fetches the base from: given, from AIRLOCK_DEBIAN_MIRROR, or the one
    this host's apt already uses for the suite."""
    if explicit or os.environ.get(MIRROR_ENV):
        return explicit or os.environ[MIRROR_ENV]
    for source in APT_SOURCES:
        files = sorted(source.glob("*.sources")) + sorted(source.glob("*.list")) if source.is_dir() else [source]
        for path in files:
            if path.is_file() and (uris := _uris(path.read_text(errors="replace"))):
                return uris[0]
    raise InvalidInput(f"no Debian {SUITE} mirror found in this host's apt sources; give one with "
                       f"--debian-mirror URL or {MIRROR_ENV}")
