"""Loading a release's service images into podman, and checking they are there.

The archives were verified with the rest of the bundle before anything was unpacked; podman then
reads each from the release folder. Tags carry the release (VERSION-SEQUENCE), so release N's images
stay loaded beside N+1's and a rollback needs no reload. Standard library only: a first install runs
this from the stand-alone verifier.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

LOAD_TIMEOUT_S = 1800


def podman_present() -> bool:
    return shutil.which("podman") is not None


def _podman(args: list[str], what: str, error: type[Exception]) -> str:
    try:
        done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=LOAD_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise error(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        raise error(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout


def load_images(bundle: Path, images: list[dict], error: type[Exception]) -> list[str]:
    """`podman load` every image archive of the release, then check each tag answers; the tags."""
    for image in images:
        _podman(["load", "--quiet", "--input", str(bundle / image["file"])], f"loading {image['file']} into podman",
                error)
        _podman(["image", "inspect", "--format", "{{.Id}}", image["tag"]],
                f"checking that {image['file']} gave the image {image['tag']}", error)
    return [image["tag"] for image in images]


def remove_images(tags: list[str]) -> None:
    """Untag what an install that failed had loaded (best effort: a tag not loaded is no error)."""
    if tags and podman_present():
        subprocess.run(["podman", "rmi", "--force", "--ignore", *tags], capture_output=True, check=False,
                       timeout=LOAD_TIMEOUT_S)
