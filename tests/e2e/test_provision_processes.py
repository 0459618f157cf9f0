"""Provisioning in processes mode: the play writes systemd units for the store, the engine, the
worker and the gateway from the release's venv, and they pass `systemd-analyze verify`. No systemd
runs here, so the test starts exactly the command lines the units hold, as the user and with the
environment they name, and the official openai client gets an answer from the gateway over TLS."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from provision_support import chat, local_inventory, playbook_argv, playbook_env, unpacked_playbooks
from vllm_fixtures import free_port

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ORDER = ("store", "engine", "worker", "gateway")


def read_unit(path: Path) -> dict:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd's keys are case-sensitive
    unit.read_string(path.read_text())
    service = dict(unit["Service"])
    # A unit may name several environment files (the store's credentials have one of their own);
    # configparser keeps only the last, systemd reads them all in order.
    service["EnvironmentFiles"] = [line.split("=", 1)[1].strip() for line in path.read_text().splitlines()
                                   if line.startswith("EnvironmentFile=")]
    return service


def unit_env(service: dict) -> dict[str, str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    for file in service.get("EnvironmentFiles", []):
        for line in Path(file.removeprefix("-")).read_text().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.partition("=")
                env[name] = value
    if "Environment" in service:
        env.update(item.split("=", 1) for item in shlex.split(service["Environment"]))
    return env


def as_unit_user(service: dict):
    """A preexec function that becomes the unit's User and Group, as systemd does."""
    uid = int(subprocess.check_output(["id", "-u", service["User"]]))
    gid = int(subprocess.check_output(["id", "-g", service["Group"]]))

    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return drop


def start(service: dict, log: Path) -> subprocess.Popen:
    """What systemd would run: ExecStart, as User/Group, with the unit's environment."""
    with log.open("wb") as out:
        return subprocess.Popen(shlex.split(service["ExecStart"]), env=unit_env(service), stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=as_unit_user(service), start_new_session=True,
                                cwd="/")


def test_the_units_verify_and_their_command_lines_serve_over_tls(cpu_bundle, provision_root, tmp_path) -> None:
    bundle, fingerprint = cpu_bundle
    playbooks = unpacked_playbooks(bundle, fingerprint, tmp_path / "control")
    root = provision_root / "processes"
    port = free_port()
    inventory = local_inventory(tmp_path / "inventory.yml", bundle=bundle, fingerprint=fingerprint, root=root,
                                mode="processes", gateway_port=port, store_port=free_port() % 20000 + 20000,
                                airlock_prefix=str(provision_root / "opt"), airlock_gateway_bind="127.0.0.1")
    done = subprocess.run(playbook_argv(playbooks, inventory), env=playbook_env(playbooks), capture_output=True,
                          text=True, timeout=2400, check=False)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-3000:]
    assert "systemd is not running on this host, so the units are written and verified but not started" in done.stdout

    units = {name: root / "units" / f"airlock-{name}.service" for name in ORDER}
    assert all(path.is_file() for path in units.values()), sorted(p.name for p in (root / "units").iterdir())
    verified = subprocess.run(["systemd-analyze", "verify", *map(str, units.values())], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    services = {name: read_unit(path) for name, path in units.items()}
    for name, service in services.items():
        assert service["Restart"] == "on-failure" and service["NoNewPrivileges"] == "true", name
        assert service["User"] == "airlock" and service["MemoryMax"], name

    procs = []
    try:
        for name in ORDER:
            procs.append(start(services[name], tmp_path / f"{name}.log"))
        cert = root / "etc" / "tls" / "gateway.crt"
        deadline, ready = time.monotonic() + 600, None
        with httpx.Client(verify=str(cert), trust_env=False, timeout=5) as client:
            while time.monotonic() < deadline:
                for name, proc in zip(ORDER, procs):
                    assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{(tmp_path / f'{name}.log').read_text()[-3000:]}"
                try:
                    ready = client.get(f"https://127.0.0.1:{port}/readyz")
                    if ready.status_code == 200 and ready.json()["components"]["worker"] == "alive":
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(2)
        assert ready is not None and ready.status_code == 200, ready.text if ready is not None else "no answer"
        gateway = services["gateway"]
        airlock = gateway["ExecStart"].split()[0]
        as_gateway = {"env": unit_env(gateway), "preexec_fn": as_unit_user(gateway), "cwd": "/",
                      "capture_output": True, "text": True, "check": True}
        made = subprocess.run([airlock, "apikey", "create", "--name", "app"], **as_gateway)
        key = re.search(r"ak-[A-Za-z0-9_-]+", made.stdout).group(0)

        def here(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True)

        answer = chat(here, url=f"https://127.0.0.1:{port}/v1", cert=cert, key=key, model="airlock-tiny",
                      messages=[{"role": "user", "content": "What is airlock?"}])
        assert answer.strip()
        # the store the units run is the S3 server the services were told about
        assert json.loads(subprocess.run([airlock, "store", "init", "--json"], **as_gateway).stdout)["created"] is False
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp_path / "control", ignore_errors=True)  # the unpacked bundle: the suite's disk is finite
