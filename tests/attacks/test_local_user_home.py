"""A local user (`nobody`) against the appliance's home: it must be private whatever the umask.

The home is made through the real code (real SQLite with its -wal and -shm files, the real folder
store, the appliance's key, a service's log, the engine's folder, a training job's folder) under
the usual umask 0o022, in a folder every user can enter, and `nobody` then tries to read it.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from local_user import as_nobody, open_folder

from airlock.access.keys import create_key
from airlock.config import REPO_ROOT, Settings
from airlock.context import Airlock
from airlock.datasets.service import add_dataset
from airlock.errors import NotReady
from airlock.home import HomeLock
from airlock.serve.vllm_server import prepare_engine_dir
from airlock.supervisor.services import Service
from airlock.trust.keys import ensure_appliance_key
from airlock.workflow.training import prepare

DATASET = REPO_ROOT / "examples" / "datasets" / "quickstart.jsonl"


@pytest.fixture
def open_parent() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("needs root: the test reads the home as another user (nobody)")
    with open_folder("airlock-home-attack-") as folder:
        yield folder


@pytest.fixture
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def open_entries(home: Path) -> list[str]:
    """Every folder and file under `home` (itself included) that group or others have any bit on."""
    found = []
    for folder, dirs, files in os.walk(home):
        for path in [Path(folder), *(Path(folder) / f for f in files)]:
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if mode & 0o077 and not path.is_symlink():
                found.append(f"{path} {mode:04o}")
    return found


def make_home(settings: Settings) -> Airlock:
    """A home as a working appliance leaves it, made by the real code, in this process."""
    airlock = Airlock.open(settings)
    add_dataset(airlock, DATASET, name="secret-data", actor="os:operator")
    create_key(airlock.meta, "app", role="inference", actor="os:operator")
    ensure_appliance_key(settings)
    lock = HomeLock(settings)
    lock.acquire()
    lock.release()
    prepare_engine_dir(settings)
    prepare(settings.training_dir / "run-1" / "train", Path("/nonexistent-base"), {"epochs": 1},
            [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]])
    # A service started the way the supervisor starts it: its log is written by this process.
    service = Service("worker", settings.run_dir / "worker.log", env={"AIRLOCK_HOME": str(settings.home)})
    service.start()
    service.stop()
    return airlock


def test_a_home_made_under_umask_022_is_closed_to_nobody(open_parent: Path, usual_umask: None) -> None:
    """If the attack succeeded, a reviewer would see `nobody` print the database or a dataset's
    bytes, and the walk list folders 0755 and files 0644 (airlock.db, -wal, blobs, logs)."""
    home = open_parent / "home"
    settings = Settings(home=home)
    airlock = make_home(settings)
    db = settings.db_path
    wal, shm = db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")
    assert wal.is_file() and shm.is_file()  # the connection is open: SQLite's own files are there too
    digest = airlock.meta.one("SELECT digest FROM datasets WHERE name = 'secret-data'")["digest"]
    blob = airlock.store.blob_path(digest)
    expected = {db, wal, shm, blob, settings.keys_dir / "appliance.key", settings.run_dir / "worker.log",
                settings.run_dir / "appliance.lock", settings.engine_secret_path,
                settings.training_dir / "run-1" / "train" / "job.json"}
    assert all(p.is_file() for p in expected), [str(p) for p in expected if not p.is_file()]
    assert open_entries(home) == []

    # The control: in the same open parent, a file the umask left 0644 IS readable by nobody, so
    # the refusals below are the home's modes at work, not something else in the way.
    control = open_parent / "control.txt"
    control.write_text("readable")
    assert as_nobody("cat", str(control)).stdout == "readable"

    for target in (db, wal, blob, settings.keys_dir / "appliance.key"):
        read = as_nobody("cat", str(target))
        assert read.returncode != 0 and "Permission denied" in read.stderr, (target, read.stdout[:80])
    listing = as_nobody("ls", str(home))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    # The system's python (the project's venv may lie where nobody cannot reach it).
    query = as_nobody("/usr/bin/python3", "-c", f"import sqlite3; sqlite3.connect({str(db)!r}).execute('SELECT 1')")
    assert query.returncode != 0 and "unable to open database" in query.stderr


def test_a_cli_command_under_umask_022_writes_owner_only_files(open_parent: Path) -> None:
    """If the umask were not set by the command, a reviewer would see airlock.db-wal, -shm and the
    store's folders come out readable by all from a plain `airlock datasets add`."""
    home = open_parent / "home"
    env = dict(os.environ, AIRLOCK_HOME=str(home), PYTHONPATH=str(REPO_ROOT / "src"))
    done = subprocess.run(["sh", "-c", 'umask 022 && exec "$0" -m airlock datasets add "$1"', sys.executable,
                           str(DATASET)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert settings_files(home) and open_entries(home) == []


def settings_files(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file()]


@pytest.mark.parametrize("where", [".", "store/blobs"])
def test_a_home_open_to_other_users_is_refused(open_parent: Path, usual_umask: None, where: str) -> None:
    """If the refusal were missing, a reviewer would see the appliance open (and write into) a home
    that `nobody` can list, instead of an error naming the folder, its mode and the chmod."""
    home = open_parent / "home"
    Airlock.open(Settings(home=home))  # a private home, as airlock makes it
    opened = (home / where).resolve()
    opened.chmod(0o755)  # by hand, as an operator's `mkdir` or a wide umask of another tool would
    before = sorted(str(p) for p in home.rglob("*"))
    with pytest.raises(NotReady) as refused:
        Airlock.open(Settings(home=home))
    assert f"{opened} is open to other users (mode 0755)" in refused.value.message
    assert f"chmod -R go-rwx {home}" in refused.value.message
    assert stat.S_IMODE(opened.stat().st_mode) == 0o755  # refused, not silently changed
    assert sorted(str(p) for p in home.rglob("*")) == before  # and nothing was written


def test_every_door_refuses_an_open_home(open_parent: Path, usual_umask: None, monkeypatch) -> None:
    """If a door skipped the check, a reviewer would see the CLI, the gateway or `airlock up`
    start on a home made 0755 by hand."""
    from airlock.cli.main import app
    from airlock.gateway.app import create_app
    from airlock.supervisor.supervisor import Supervisor

    home = open_parent / "home"
    home.mkdir(mode=0o755)
    settings = Settings(home=home)
    monkeypatch.setenv("AIRLOCK_HOME", str(home))
    result = CliRunner().invoke(app, ["apikey", "list"])
    assert result.exit_code == NotReady.exit_code and f"{home} is open to other users (mode 0755)" in result.output
    with pytest.raises(NotReady, match="mode 0755"):
        create_app(settings)
    with pytest.raises(NotReady, match="mode 0755"):
        Supervisor(settings, on_status=lambda _: None).start()
    assert not settings.db_path.exists() and not (home / "run" / "appliance.lock").exists()


def test_a_running_appliance_started_under_umask_022_keeps_its_home_closed(open_parent: Path,
                                                                            tiny_models_dir: Path) -> None:
    """If any process of the appliance (the supervisor, vLLM, the worker, the gateway, SQLite)
    created something with the caller's umask, a reviewer would see it listed with group/other
    bits, in a home `nobody` could then read."""
    from vllm_fixtures import free_port

    home = open_parent / "home"
    env = dict(os.environ, AIRLOCK_HOME=str(home), AIRLOCK_MODELS_DIR=str(tiny_models_dir),
               AIRLOCK_GATEWAY_PORT=str(free_port()), PYTHONPATH=str(REPO_ROOT / "src"))
    up = subprocess.Popen(["sh", "-c", 'umask 022 && exec "$0" -m airlock up', sys.executable], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not _ready(home):
            assert up.poll() is None, (home / "run" / "engine.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the appliance did not become ready"
            time.sleep(1)
        added = subprocess.run(["sh", "-c", 'umask 022 && exec "$0" -m airlock datasets add "$1"', sys.executable,
                                str(DATASET)], env=env, capture_output=True, text=True, timeout=120)
        assert added.returncode == 0, added.stderr
        assert (home / "airlock.db-wal").is_file() and (home / "run" / "engine" / "vllm.sock").exists()
        assert open_entries(home) == []
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(timeout=120)


def _ready(home: Path) -> bool:
    try:
        services = json.loads((home / "run" / "status.json").read_text())["services"]
    except (OSError, ValueError, KeyError):
        return False
    return all(services[name]["state"] == "ready" for name in ("engine", "gateway"))
