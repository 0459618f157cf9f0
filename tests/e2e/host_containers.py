"""Podman containers standing in for provisioned hosts: each a Debian 12 with its own podman (its own
image store, networks and containers), reached by Ansible through the `containers.podman.podman`
connection plugin, and joined to the others by one podman network of this machine.

A host container runs privileged: its podman mounts overlays, makes network namespaces and sets
cgroup limits for the containers it runs, as a real host's podman does. Its image store is a folder
of this machine's disk (overlay cannot stack on the container's own overlay root); its podman
settings are this machine's (runc, ulimits) with another default subnet, since a host's network
must not overlap the one it is attached to."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from airlock.bundle.images import debian_image
from airlock.bundle.podman import debian_mirror
from provision_support import run_in

HOST_PACKAGES = Path(__file__).with_name("host.packages")
INNER_STORAGE = '[storage]\ndriver = "overlay"\nrunroot = "/run/containers/storage"\ngraphroot = "/var/lib/containers/storage"\n'


def host_image() -> str:
    """The hosts' image, made with debootstrap once per machine (cached under a tag of its package list)."""
    return debian_image(HOST_PACKAGES, debian_mirror(), name="airlock-test-host")


class HostContainer:
    def __init__(self, name: str, address: str) -> None:
        self.name, self.address = name, address

    def run(self, argv: list[str], *, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        """A command on the host, as root."""
        return run_in(["podman", "exec", self.name], argv, where=self.name, timeout=timeout, check=check)

    def read(self, path: str) -> str:
        return self.run(["cat", path]).stdout


def _podman(*args: str, what: str) -> None:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{what}: podman exited {done.returncode}: {done.stderr.strip()}")


def _inner_containers_conf(folder: Path) -> Path:
    here = Path(os.environ["CONTAINERS_CONF"]).read_text() if os.environ.get("CONTAINERS_CONF") else ""
    path = folder / "containers.conf"
    path.write_text(here + '\n[network]\ndefault_subnet = "10.123.0.0/24"\n')
    return path


@contextmanager
def host_containers(addresses: dict[str, str], *, subnet: str, work: Path, bundle: Path) -> Iterator[dict[str, HostContainer]]:
    """One running host container per name (at its address on a fresh network of `subnet`), each with
    the bundle at the same path as on this machine, read-only (a shared mount, as airlock_bundle_copy:
    false expects); all removed on exit, their image stores too."""
    image = host_image()
    tag = uuid.uuid4().hex[:6]
    network = f"airlock-hosts-{tag}"
    work.mkdir(parents=True, exist_ok=True)
    conf = _inner_containers_conf(work)
    (work / "storage.conf").write_text(INNER_STORAGE)
    _podman("network", "create", "--subnet", subnet, network, what=f"creating the hosts' network {network} ({subnet})")
    hosts = {}
    try:
        for name, address in addresses.items():
            store = work / f"{name}-images"
            store.mkdir()
            host = HostContainer(f"airlock-host-{name}-{tag}", address)
            _podman("run", "--detach", "--privileged", "--name", host.name, "--hostname", name, "--network", network,
                    "--ip", address, "--volume", f"{conf}:/etc/containers/containers.conf:ro",
                    "--volume", f"{work / 'storage.conf'}:/etc/containers/storage.conf:ro",
                    "--volume", f"{store}:/var/lib/containers/storage", "--volume", f"{bundle}:{bundle}:ro",
                    image, "catatonit", "--", "sleep", "infinity", what=f"starting the host {name}")
            hosts[name] = host
        yield hosts
    finally:
        for host in hosts.values():
            # the host's own containers first: their overlays are mounted in the host's store
            subprocess.run(["podman", "exec", host.name, "podman", "rm", "--all", "--force", "--time", "5"],
                           capture_output=True, check=False, timeout=300)
            subprocess.run(["podman", "rm", "--force", "--time", "5", host.name], capture_output=True, check=False)
        subprocess.run(["podman", "network", "rm", "--force", network], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
