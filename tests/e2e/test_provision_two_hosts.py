"""Two hosts from one inventory, each a podman container with its own podman, disk and network
address (tests/e2e/host_containers.py), reached through the `containers.podman.podman` connection
plugin the bundle vendors: `storehost` in stores, `servicehost` in gateways, engines and workers.
One playbook run provisions both, with every path at its default and the firewall the play writes;
the quickstart trains on the service host with its adapter written to the store across the network,
and the official openai client on this machine (the control node, a third host) gets the trained
answer from the service host's gateway over TLS."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time

import pytest
from e2e_support import QA
from host_containers import host_containers
from provision_support import appliance_vars, chat, playbook_argv, playbook_env, recap, unpacked_playbooks, write_inventory

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ALIAS = "quickstart-assistant"
SUBNET, STORE_ADDRESS, SERVICE_ADDRESS = "10.124.0.0/24", "10.124.0.11", "10.124.0.12"
GATEWAY_PORT, STORE_PORT = 8443, 9000  # the defaults: each host has its own ports


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=True, **kwargs)


def test_one_playbook_serves_the_quickstart_across_a_store_host_and_a_service_host(cpu_bundle, host_image_built,
                                                                                   tmp_path) -> None:
    bundle, fingerprint = cpu_bundle
    playbooks = unpacked_playbooks(bundle, fingerprint, tmp_path / "control")
    addresses = {"storehost": STORE_ADDRESS, "servicehost": SERVICE_ADDRESS}
    try:
        with host_containers(addresses, subnet=SUBNET, work=tmp_path / "hosts", bundle=bundle) as hosts:
            store, service = hosts["storehost"], hosts["servicehost"]
            common = {"ansible_connection": "containers.podman.podman", "ansible_python_interpreter": "/usr/bin/python3",
                      "ansible_become": False,
                      **appliance_vars(bundle=bundle, fingerprint=fingerprint, mode="containers",
                                       gateway_port=GATEWAY_PORT, store_port=STORE_PORT)}
            own = {name: {"ansible_host": host.name, "airlock_host_address": host.address} for name, host in hosts.items()}
            own["storehost"]["airlock_store_bind"] = STORE_ADDRESS
            own["servicehost"]["airlock_gateway_name"] = SERVICE_ADDRESS
            inventory = write_inventory(tmp_path / "inventory.yml", common, hosts=own,
                                        groups={"stores": ["storehost"], "gateways": ["servicehost"],
                                                "engines": ["servicehost"], "workers": ["servicehost"]})
            started = time.monotonic()
            done = subprocess.run(playbook_argv(playbooks, inventory), env=playbook_env(playbooks),
                                  capture_output=True, text=True, timeout=2400, check=False)
            assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-3000:]
            print(f"two hosts provisioned in {time.monotonic() - started:.0f} s")
            assert recap(done.stdout, "storehost")["failed"] == 0 and recap(done.stdout, "servicehost")["failed"] == 0

            # Each host runs only its share, on its own podman.
            running = {name: host.run(["podman", "ps", "--format", "{{.Names}}"]).stdout.split()
                       for name, host in hosts.items()}
            assert running["storehost"] == ["airlock-store"], running
            assert set(running["servicehost"]) == {"airlock-engine", "airlock-worker", "airlock-gateway"}, running
            # ... and loads only the images of what it runs: the store runs in the gateway's image.
            loaded = {name: host.run(["podman", "images", "--format", "{{.Repository}}"]).stdout.split()
                      for name, host in hosts.items()}
            assert loaded["storehost"] == ["localhost/airlock-gateway"], loaded
            assert set(loaded["servicehost"]) == {f"localhost/airlock-{s}" for s in ("gateway", "worker", "engine")}, loaded
            # The service host finds the store at the store host's address; the credentials crossed
            # through the play, and nothing of the services lies on the store host.
            settings = service.read("/etc/airlock/airlock-store.env")
            assert f"AIRLOCK_S3_ENDPOINT={STORE_ADDRESS}:{STORE_PORT}" in settings
            assert "AIRLOCK_S3_SECURE=true" in settings and "AIRLOCK_S3_CA=/store-ca.crt" in settings  # TLS between hosts
            assert "AIRLOCK_S3_" not in service.read("/etc/airlock/airlock.env")  # the engine's settings: no store keys
            assert service.run(["test", "-e", "/etc/airlock/store.credentials"], check=False).returncode != 0
            assert store.run(["test", "-e", "/etc/airlock/airlock.env"], check=False).returncode != 0
            # The store host's firewall admits the inventory's hosts to the store's port, and no one
            # else: this machine, the control node, is not in the inventory (its packets are dropped).
            table = store.run(["nft", "list", "set", "inet", "airlock", "peers"]).stdout
            assert SERVICE_ADDRESS in table and STORE_ADDRESS in table, table
            with pytest.raises(OSError):
                socket.create_connection((STORE_ADDRESS, STORE_PORT), timeout=5).close()

            service.run(["podman", "exec", "airlock-worker", "airlock", "gate", "policy", "set", ALIAS,
                         "--approvals", "0"])
            run = service.run(["podman", "exec", "airlock-worker", "airlock", "workflow", "run",
                               "/examples/quickstart.yaml", "--wait"], timeout=1800)
            assert "succeeded" in run.stdout + run.stderr, run.stdout + run.stderr
            created = service.run(["podman", "exec", "airlock-gateway", "airlock", "apikey", "create", "--name",
                                   "app", "--models", ALIAS]).stdout
            key = re.search(r"ak-[A-Za-z0-9_-]+", created).group(0)
            cert = tmp_path / "gateway.crt"
            cert.write_text(service.read("/etc/airlock/tls/gateway.crt"))
            # The client is on a third host: the answer crosses the network, trusting only the
            # service host's generated certificate.
            answer = chat(lambda argv, timeout: _run(argv, timeout=timeout),
                          url=f"https://{SERVICE_ADDRESS}:{GATEWAY_PORT}/v1", cert=cert, key=key, model=ALIAS,
                          messages=QA[0][:-1])
            assert answer.strip() == QA[0][-1]["content"]
    finally:
        shutil.rmtree(tmp_path / "control", ignore_errors=True)  # an unpacked bundle: the suite's disk is finite
