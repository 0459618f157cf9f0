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
IMAGES_HELP = ("the service images to load into podman, comma-separated (gateway,worker,engine), or `none`; "
               "default: all the bundle has. A host loads those it runs (the store runs in the gateway's image)")


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


def chosen_images(images: list[dict], services: list[str] | None, error: type[Exception]) -> list[dict]:
    """The bundle's images of `services` (all of them when None): a host loads only what it runs."""
    if services is None:
        return images
    known = [image["service"] for image in images]
    unknown = [service for service in services if service not in known]
    if unknown:
        raise error(f"--images {','.join(services) or 'none'}: {', '.join(unknown)} not among this bundle's images "
                    f"({', '.join(known) or 'it has none'})")
    return [image for image in images if image["service"] in services]


def parse_services(value: str | None) -> list[str] | None:
    """`--images gateway,worker` as a list; `none` an empty one; no option, None (all)."""
    if value is None:
        return None
    return [] if value.strip() == "none" else [part.strip() for part in value.split(",") if part.strip()]


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
