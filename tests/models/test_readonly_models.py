"""A models folder mounted read-only (an installed release, a container's `:ro` volume) is listed
and digested all the same: nothing is ever written beside the files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from airlock.models.catalog import model_digest


def test_a_read_only_model_folder_gets_the_same_digest(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root: the test mounts the folder read-only in its own mount namespace")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    expected = model_digest(folder)
    script = (f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} && "
              f"{sys.executable} -c 'import sys; from airlock.models.catalog import model_digest; "
              f"print(model_digest(sys.argv[1]))' {folder} && touch {folder}/probe")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == expected, done.stderr
    assert "Read-only file system" in done.stderr  # the mount really was read-only
    assert not list(folder.glob(".airlock-digest*"))
