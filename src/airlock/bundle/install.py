"""Installing a verified bundle as a release beside the current one, switching only when healthy.

    PREFIX/trust/root.json          the pinned trust root (earlier versions in trust/N.root.json)
    PREFIX/releases/VERSION-SEQ/    one per installed bundle: bundle/ (unpacked), venv/, airlock.env;
                                    its images (all, or those asked for), where podman is present, as localhost/airlock-SERVICE:VERSION-SEQ
    PREFIX/current -> releases/...  what runs; replaced atomically, only after the health checks
    PREFIX/state.json               current and previous release, the highest sequence ever installed

A release is unpacked and set up in its own folder, marked complete only once healthy; any failure
removes it and leaves the current release running. Nothing here touches AIRLOCK_HOME: the appliance's data stays as it is.

Standard library only: a first install runs this from the stand-alone verifier with a bare python3.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from airlock.bundle.check import Verified, read_json, unpack, verify_bundle
from airlock.bundle.pip_run import sealed_pip_env
from airlock.bundle.podman_load import chosen_images, load_images, podman_present, remove_images
from airlock.errors import AirlockError, InvalidInput
from airlock.trust.atomic import write_atomic
from airlock.trust.pinned import ROOT_FILE, accept_new_roots, load_pinned, pin_first
from airlock.trust.root import Root

HEALTH_TIMEOUT_S = 300
# Installing a target's wheels (torch and vLLM among them) takes minutes on a small host, more on a slow disk.
PIP_INSTALL_TIMEOUT_S = 1800
COMPLETE = ".complete"  # written last: a release folder without it is an install that did not finish
# The modules every service imports; a release whose venv cannot import them never becomes current.
HEALTH_IMPORTS = "import airlock.cli.main, airlock.gateway.app, airlock.train, torch, vllm"


class InstallFailed(AirlockError):
    code = "install_failed"


def read_state(prefix: Path) -> dict:
    path = prefix / "state.json"
    return read_json(path, "the install state") if path.exists() else {}


def pinned_root(prefix: Path) -> Root | None:
    return load_pinned(prefix / "trust") if (prefix / "trust" / ROOT_FILE).exists() else None


def _pin(prefix: Path, verified: Verified, pinned: Root | None, fingerprint: str | None, now: datetime) -> None:
    """Pin the first root, or move the pinned one along the rotation the bundle carried."""
    if pinned is None:
        pin_first(prefix / "trust", verified.root.document, fingerprint or "", now=now)
    elif verified.chain:
        accept_new_roots(prefix / "trust", verified.chain, now=now)


def _run(cmd: list[str], what: str, timeout_s: float = HEALTH_TIMEOUT_S, **kwargs) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallFailed(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise InstallFailed(f"{what} failed (exit {done.returncode}): {tail}")


def _set_up(release: Path, python: str, prefix: Path) -> None:
    wheels = release / "bundle" / "wheels"
    _run([python, "-m", "venv", str(release / "venv")], "creating the virtual environment")
    _run([str(release / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
          "--require-hashes", "--find-links", str(wheels), "-r", str(wheels / "requirements.lock")],
         "installing the bundle's wheels (no index, hashes required)", PIP_INSTALL_TIMEOUT_S, env=sealed_pip_env())
    # No AIRLOCK_MODELS_DIR: that would hide the shared models folder. The release's airlock finds its
    # own models and PREFIX/models from where its venv lies (airlock.config.Settings.models_dirs).
    (release / "airlock.env").write_text("# Settings of this release (AIRLOCK_*=...). Its models are found without any:\n"
                                         f"# {release / 'bundle' / 'models'}, then {prefix / 'models'}.\n")


def _health(release: Path) -> None:
    venv = release / "venv" / "bin"
    _run([str(venv / "airlock"), "--help"], "health check `airlock --help`")
    _run([str(venv / "python"), "-c", HEALTH_IMPORTS], "health check (importing the services, torch, vLLM)")


def _switch(prefix: Path, name: str) -> None:
    link = prefix / ".current.new"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path("releases") / name)
    os.replace(link, prefix / "current")


@contextmanager
def exclusive(prefix: Path) -> Iterator[None]:
    """One install or rollback at a time per prefix."""
    with (prefix / ".install.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidInput(f"{prefix}: another install or rollback is running") from None
        yield


def install(bundle_dir: Path, prefix: Path, *, now: datetime, fingerprint: str | None = None,
            python: str = sys.executable, health: bool = True, services: list[str] | None = None) -> dict:
    """Install the bundle as a new release; `services` names the images to load (None: all of them)."""
    prefix.mkdir(parents=True, exist_ok=True)
    with exclusive(prefix):
        state, pinned = read_state(prefix), pinned_root(prefix)
        verified = verify_bundle(bundle_dir, now=now, pinned=pinned, fingerprint=fingerprint,
                                 installed_sequence=state.get("highest_sequence"), space_at=prefix)
        m = verified.manifest
        images = chosen_images(m.get("contents", {}).get("images") or [], services, InvalidInput)
        name = f"{m['version']}-{m['sequence']}"
        release = prefix / "releases" / name
        if (release / COMPLETE).exists():
            raise InvalidInput(f"{release}: this bundle is installed already; `airlock bundle rollback` "
                               "switches between installed releases")
        # Set up in place (a venv's scripts name their own path, so it cannot move afterwards), but
        # complete only once healthy: a release without the marker is never current, and is redone.
        shutil.rmtree(release, ignore_errors=True)  # left by an install that was killed
        release.mkdir(parents=True, mode=0o755)
        try:
            unpack(bundle_dir, verified, release / "bundle")
            _set_up(release, python, prefix)
            loaded = load_images(release / "bundle", images, InstallFailed) if images and podman_present() else []
            if health:
                _health(release)
            (release / COMPLETE).write_text(f"{now.isoformat()}\n")
        except BaseException:
            shutil.rmtree(release, ignore_errors=True)
            remove_images([image["tag"] for image in images])  # a release never current leaves no images
            raise
        _pin(prefix, verified, pinned, fingerprint, now)
        _switch(prefix, name)
        new_state = {"current": name, "previous": state.get("current"),
                     "highest_sequence": max(m["sequence"], state.get("highest_sequence") or 0)}
        write_atomic(prefix / "state.json", json.dumps(new_state, indent=2).encode(), 0o644)
        # Said, not stored: whether podman held the images is this host's fact, not the release's.
        return {**new_state, "images": loaded,
                "images_skipped": len(images) if images and not loaded else 0}


def installed_text(prefix: Path, state: dict) -> str:
    """What an install says it did, the same from the installed airlock and the stand-alone verifier."""
    said = f"installed: {prefix / 'releases' / state['current']} is current"
    said += f" (previous: {state['previous']})" if state.get("previous") else ""
    if state.get("images"):
        said += "\nloaded into podman: " + ", ".join(state["images"])
    elif state.get("images_skipped"):
        said += (f"\n{state['images_skipped']} service images not loaded: podman is not installed here "
                 "(the services run from the release's venv)")
    return said


def rollback(prefix: Path) -> dict:
    """Make the previous release current again (and the current one previous)."""
    with exclusive(prefix):
        state = read_state(prefix)
        previous = state.get("previous")
        if not previous or not (prefix / "releases" / previous / COMPLETE).exists():
            raise InvalidInput(f"{prefix}: no previous release to roll back to")
        _switch(prefix, previous)
        new_state = {**state, "current": previous, "previous": state["current"]}
        write_atomic(prefix / "state.json", json.dumps(new_state, indent=2).encode(), 0o644)
        return new_state
