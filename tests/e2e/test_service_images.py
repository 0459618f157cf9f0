"""The service images of a built CPU bundle are the appliance: loaded into podman from their
signed archives, run as three containers (engine and worker with no network at all, the gateway
publishing one port) that share one home volume, they train, evaluate, sign, promote and serve
the quickstart, and the official openai client gets the trained answer through the gateway
container. The gateway's image holds no torch, every service runs as the unprivileged airlock user
on a read-only root with no capabilities, and the SBOM names every Debian package of the images.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from e2e_support import QA
from openai import OpenAI
from vllm_fixtures import free_port

from airlock.bundle.check import unpack, verify_bundle
from airlock.bundle.podman_load import load_images

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

UID = 10001  # the airlock user of every image (images/Containerfile)
HOME = "/var/lib/airlock"
ALIAS = "quickstart-assistant"


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def release(cpu_bundle, tmp_path_factory) -> Iterator[tuple[Path, dict[str, str]]]:
    """The bundle verified and unpacked, its images loaded into podman: the folder and the tag of each service."""
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: ./install.sh installs it (apt-get install podman runc)")
    bundle, fingerprint = cpu_bundle
    verified = verify_bundle(bundle, now=datetime.now(UTC), fingerprint=fingerprint)
    unpacked = unpack(bundle, verified, tmp_path_factory.mktemp("release") / "bundle")
    images = verified.manifest["contents"]["images"]
    load_images(unpacked, images, AssertionError)
    yield unpacked, {image["service"]: image["tag"] for image in images}
    shutil.rmtree(unpacked, ignore_errors=True)  # the suite's disk is finite


@pytest.fixture(scope="module")
def containers(release, tmp_path_factory) -> Iterator[dict]:
    """engine, worker and gateway running from the images on one home volume, /readyz answering 200."""
    unpacked, tags = release
    home = tmp_path_factory.mktemp("containers") / "home"
    home.mkdir(mode=0o700)
    os.chown(home, UID, UID)
    port = free_port()
    run_id = uuid.uuid4().hex[:8]
    names = {service: f"airlock-test-{service}-{run_id}" for service in tags}
    # Least privilege: a read-only root (tmpfs /tmp), no capabilities, no privilege gain; only the home is written.
    shared = ["--read-only", "--cap-drop=all", "--security-opt=no-new-privileges",
              "-v", f"{home}:{HOME}", "-v", f"{unpacked / 'models'}:/models:ro", "-e", "AIRLOCK_MODELS_DIR=/models"]
    try:
        podman("run", "-d", "--name", names["engine"], "--network=none", "--shm-size=1g", *shared, tags["engine"])
        podman("run", "-d", "--name", names["worker"], "--network=none", *shared,
               "-v", f"{unpacked / 'examples'}:/examples:ro", tags["worker"])
        podman("run", "-d", "--name", names["gateway"], "-p", f"127.0.0.1:{port}:8080",
               "-e", "AIRLOCK_GATEWAY_HOST=0.0.0.0", *shared, tags["gateway"])
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, names)
        yield {"url": url, "names": names, "home": home}
    finally:
        for name in names.values():
            podman("rm", "--force", "--time", "10", name, check=False)


def _wait_ready(url: str, names: dict[str, str], timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for service, name in names.items():
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state != "running":
                raise AssertionError(f"the {service} container is {state}:\n{podman('logs', name).stderr[-4000:]}")
        try:
            last = httpx.get(f"{url}/readyz", timeout=2)
            if last.status_code == 200 and last.json()["components"]["worker"] == "alive":
                return last.json()
        except httpx.HTTPError:
            pass
        time.sleep(1)
    logs = {service: podman("logs", name).stderr[-2000:] for service, name in names.items()}
    raise AssertionError(f"the containers were not ready in {timeout:.0f} s (last /readyz: "
                         f"{last.text if last is not None else None}):\n{json.dumps(logs, indent=1)}")


def test_the_containers_run_the_quickstart_and_serve_it_through_the_gateway(containers) -> None:
    names = containers["names"]
    ready = httpx.get(f"{containers['url']}/readyz").json()
    assert ready["components"] == {"gateway": "ready", "engine": "ready", "worker": "alive"}
    # the worker container trains on the bundled quickstart, the engine container serves the result
    podman("exec", names["worker"], "airlock", "gate", "policy", "set", ALIAS, "--approvals", "0")
    run = podman("exec", names["worker"], "airlock", "workflow", "run", "/examples/quickstart.yaml", "--wait",
                 timeout=900)
    assert "succeeded" in run.stdout + run.stderr, run.stdout + run.stderr
    out = podman("exec", names["gateway"], "airlock", "apikey", "create", "--name", "app",
                 "--models", ALIAS).stdout
    key = re.search(r"ak-[A-Za-z0-9_-]+", out).group(0)
    client = OpenAI(base_url=f"{containers['url']}/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(model=ALIAS, messages=QA[0][:-1], temperature=0, max_tokens=40)
    assert reply.choices[0].message.content.strip() == QA[0][-1]["content"]


def test_every_service_runs_unprivileged_on_a_read_only_root_and_the_gateway_has_no_torch(containers) -> None:
    for name in containers["names"].values():
        assert podman("exec", name, "id", "-u").stdout.strip() == str(UID)
    no_torch = podman("exec", containers["names"]["gateway"], "python3", "-c", "import torch", check=False)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    # only the gateway has a network; the engine and worker reach it and each other through the home volume
    for service in ("engine", "worker"):
        mode = podman("inspect", "--format", "{{.HostConfig.NetworkMode}}", containers["names"][service]).stdout
        assert mode.strip() == "none", service
    gateway = containers["names"]["gateway"]
    denied = podman("exec", gateway, "sh", "-c", "touch /opt/airlock/venv/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    status = dict(line.split(":\t", 1) for line in podman("exec", gateway, "cat", "/proc/1/status").stdout.splitlines()
                  if ":\t" in line)
    assert int(status["CapBnd"], 16) == 0 and status["NoNewPrivs"].strip() == "1"  # not even a setuid binary helps
    engine_dir = containers["home"] / "run" / "engine"
    assert engine_dir.stat().st_uid == UID and engine_dir.stat().st_mode & 0o777 == 0o700


def test_the_sbom_names_the_debian_packages_and_wheels_of_each_image(release) -> None:
    unpacked, tags = release
    sbom = json.loads((unpacked / "sbom.cdx.json").read_text())
    debs = [c for c in sbom["components"] if c.get("purl", "").startswith("pkg:deb/")]
    in_image = {p["value"] for c in debs for p in c.get("properties", []) if p["name"] == "airlock:image"}
    assert in_image == set(tags.values())
    assert any(c["name"] == "python3.11-minimal" for c in debs)
    torch = next(c for c in sbom["components"] if c["name"] == "torch")
    torch_images = {p["value"] for p in torch["properties"] if p["name"] == "airlock:image"}
    assert torch_images == {tags["worker"], tags["engine"]}
    containers = {c["name"]: c for c in sbom["components"] if c["type"] == "container"}
    assert set(containers) == {tag.rpartition(":")[0] for tag in tags.values()}
