"""Shared fixtures: a fresh appliance home (real SQLite, real folder store) per test; and, where a run
may use them, the e2e bundles built in the background from its start (tests/e2e/bundle_builder.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.config import REPO_ROOT, Settings
from airlock.context import Airlock

pytest_plugins = ["vllm_fixtures", "browser_fixtures"]

EXAMPLES = REPO_ROOT / "examples"
# podman on hosts such as CI's (no systemd as PID 1, a cgroup mode crun refuses, no CAP_SYS_RESOURCE)
# needs the repository's settings for it (docs/bundle.md), unless the environment names others.
os.environ.setdefault("CONTAINERS_CONF", str(REPO_ROOT / "images" / "containers.conf"))


@pytest.fixture(autouse=True)
def _restore_umask() -> Iterator[None]:
    """Commands that open a home set an owner-only umask for their whole process (airlock.private);
    run in-process (CliRunner), they must not hand it on to the tests after them."""
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    home = tmp_path / "home"
    monkeypatch.setenv("AIRLOCK_HOME", str(home))
    return Settings(home=home)


@pytest.fixture
def airlock(settings: Settings) -> Airlock:
    return Airlock.open(settings)


@pytest.fixture(scope="session")
def tiny_models_dir() -> Path:
    """The repo's offline_models/ with the reference model in it (install.sh builds it; so do we)."""
    from vllm_fixtures import ensure_reference_model

    return ensure_reference_model().parent


E2E = Path(__file__).with_name("e2e")
BUILDER_SCRIPT = E2E / "bundle_builder.py"
BUILD_DIR = "AIRLOCK_TEST_BUILD_DIR"  # where the builder writes; the test processes (xdist's workers) inherit it
BUNDLE_FIXTURES = ("cpu_bundle", "later_bundles", "host_image_built")
BUILDER = pytest.StashKey[subprocess.Popen]()
# The e2e modules that use the bundles, in two groups, each run by one xdist worker in this order:
# this machine (the offline install and the images it loads, the refusals, then provisioning in
# processes and in containers mode: one prefix, one service user; processes first, since the
# containers module upgrades the prefix to N+1), and the two host containers. Under xdist both
# groups come first, one on each worker (each waits for the bundle), then the rest of the suite:
# the two-host test then runs beside the lighter first half of the other group, not beside the
# containers module, so that their disk use (a release and its venv per host) does not add up.
GROUPS = {"test_bundle_offline": "this-host", "test_service_images": "this-host",
          "test_provision_refusals": "this-host", "test_provision_processes": "this-host",
          "test_provision_containers": "this-host", "test_provision_two_hosts": "two-hosts"}


def _may_use_bundles(config: pytest.Config) -> bool:
    """Whether the run's paths reach a test module that uses the bundles."""
    for arg in config.args:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path.is_dir() and (E2E.is_relative_to(path) or path.is_relative_to(E2E)):
            return True
        if path.is_file() and path.is_relative_to(E2E) and any(name in path.read_text() for name in BUNDLE_FIXTURES):
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    """In the process that runs the session (not in xdist's workers): start the builder."""
    if (hasattr(config, "workerinput") or os.environ.get(BUILD_DIR) or os.environ.get("AIRLOCK_TEST_BUNDLE")
            or config.option.collectonly or not _may_use_bundles(config)):
        return
    out = Path(tempfile.mkdtemp(prefix="airlock-test-bundles-"))
    with (out / "build.log").open("w") as log:
        # Niced: the tests running meanwhile keep their timing; the build takes the idle CPU.
        config.stash[BUILDER] = subprocess.Popen(["nice", "-n", "10", sys.executable, str(BUILDER_SCRIPT), str(out)],
                                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (out / "pid").write_text(str(config.stash[BUILDER].pid))
    os.environ[BUILD_DIR] = str(out)


def pytest_unconfigure(config: pytest.Config) -> None:
    builder = config.stash.get(BUILDER, None)
    if builder is None:
        return
    if builder.poll() is None:
        os.killpg(builder.pid, signal.SIGKILL)
        builder.wait()
    subprocess.run([sys.executable, str(BUILDER_SCRIPT), "--clean", os.environ.pop(BUILD_DIR)], check=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The groups' tests in GROUPS' order: first where xdist runs them beside the rest, last in one
    process (nothing else would run while they wait for the build)."""
    _unique_node_ids(items)
    modules = list(GROUPS)
    grouped = sorted((item for item in items if item.module is not None and item.module.__name__ in GROUPS),
                     key=lambda item: modules.index(item.module.__name__))
    rest = [item for item in items if item.module is None or item.module.__name__ not in GROUPS]
    items[:] = grouped + rest if hasattr(config, "workerinput") else rest + grouped


def _unique_node_ids(items: list[pytest.Item]) -> None:
    """schemathesis names each API operation's item (test_valid_requests[POST /completions]) but
    leaves the node id pytest 9 derives at the bare function (test_valid_requests): xdist, which
    schedules by node id, would then run one operation of each test. Each such item gets its
    operation as the id's parameters, as its name says."""
    counts = Counter(item.nodeid for item in items)
    for item in items:
        originalname = getattr(item, "originalname", item.name)
        if counts[item.nodeid] > 1 and item.name.startswith(f"{originalname}[") and item._id.params is None:
            item._id = item._id.with_params(item.name[len(originalname) + 1:-1])
    duplicated = [nodeid for nodeid, count in Counter(item.nodeid for item in items).items() if count > 1]
    assert not duplicated, f"tests with the same node id (xdist would run one of each): {duplicated}"


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """--dist loadscope, with each of GROUPS' groups one scope (xdist's own loadgroup marks no longer
    take effect with this pytest: it renames node ids, which pytest 9 derives)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class BundleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return GROUPS.get(Path(nodeid.split("::", 1)[0]).stem) or super()._split_scope(nodeid)

    return BundleGroups(config, log)
