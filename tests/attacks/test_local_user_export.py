"""A local user who is not the appliance's account (`nobody`) tries to export an adapter: by
running `airlock models export` against the appliance's home, into a folder they own. An export
is an admin action on the host, so it must be refused, naming why, with nothing written."""

from __future__ import annotations

import os
import site
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from gate_support import signed_candidate
from local_user import NOBODY, open_folder

from airlock.config import REPO_ROOT, Settings
from airlock.context import Airlock
from airlock.errors import Forbidden

pytestmark = pytest.mark.skipif(os.getuid() != 0 and not os.environ.get("CI"),
                                reason="runs the attacker as another user (needs root)")


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """Holds the appliance's (private) home and the attacker's own folder."""
    with open_folder("airlock-export-attack-") as folder:
        yield folder


def as_nobody_airlock(*args: str, home: Path) -> subprocess.CompletedProcess:
    """`python -m airlock ...` as nobody: the system's python with this checkout's sources and the
    project's installed packages on its path (the project's own interpreter may lie where nobody
    cannot reach it), as a local user would run an installed airlock."""
    path = os.pathsep.join([str(REPO_ROOT / "src"), *site.getsitepackages()])
    env = {"PATH": "/usr/bin:/bin", "AIRLOCK_HOME": str(home), "PYTHONPATH": path, "HOME": "/tmp"}
    return subprocess.run(["/usr/bin/python3", "-m", "airlock", *args], user=NOBODY, group=NOBODY, extra_groups=[],
                          env=env, capture_output=True, text=True, timeout=120, cwd="/tmp")


def test_another_local_user_cannot_export(open_parent: Path, tmp_path: Path) -> None:
    """Had it worked, a reviewer would see the adapter's files in nobody's folder, or, had only the
    refusal been missing, a traceback from deep inside instead of a refusal naming the home."""
    home = open_parent / "home"
    airlock = Airlock.open(Settings(home=home))
    model_id = signed_candidate(airlock, tmp_path, 51)
    theirs = open_parent / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)

    # The control: nobody can run airlock here at all (a command that needs no home answers).
    assert as_nobody_airlock("models", "export", "--help", home=home).returncode == 0
    done = as_nobody_airlock("models", "export", model_id, "--out", str(theirs / "adapter"), home=home)
    assert done.returncode == Forbidden.exit_code, done.stdout + done.stderr
    assert "admin action on the host" in done.stderr and str(home) in done.stderr
    assert "Traceback" not in done.stderr
    assert list(theirs.iterdir()) == []
    assert airlock.meta.query("SELECT 1 FROM audit WHERE action = 'model.exported'") == []
