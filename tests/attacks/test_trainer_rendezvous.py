"""A trainer names the training rendezvous: refused at submission, and nothing connects to it.

torch's elastic rendezvous unpickles what it reads from its store, so a trainer who could name a
store they run (`rdzv_endpoint`, or any field naming a host or port) would get their pickle run as
the appliance's user. Where training runs is the operator's configuration; the submission is
refused with the setting that holds it, and a fake store on loopback that records every
connection sees none, with a real worker ready to launch anything that had been queued.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_support import Gateway, gateway_settings, run_gateway
from worker_support import WorkerProcess

from airlock.config import REPO_ROOT

DATA = REPO_ROOT / "examples" / "datasets" / "quickstart.jsonl"
QUIET_S = 10.0


class FakeStore:
    """A real TCP listener on 127.0.0.1 that records each connection it accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[tuple[str, int]] = []
        self.sock.settimeout(0.2)
        self.open = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.open:
            try:
                conn, peer = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted.append(peer)
            conn.close()

    def close(self) -> None:
        self.open = False
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    yield from run_gateway(gateway_settings(tmp_path / "home"))


@pytest.fixture
def store() -> Iterator[FakeStore]:
    fake = FakeStore()
    yield fake
    fake.close()


def submit(gw: Gateway, key: str, with_: dict, overrides: list[str] | None = None) -> httpx.Response:
    spec = {"name": "rdzv", "base_model": "airlock-tiny", "dataset": "quickstart",
            "stages": [{"name": "finetune", "uses": "finetune.lora", "with": with_}]}
    return httpx.post(f"{gw.url}/api/runs", headers={"Authorization": f"Bearer {key}"},
                      json={"spec": spec, "set": overrides or []}, timeout=120)


def trainer_with_dataset(gw: Gateway) -> str:
    trainer = gw.new_key("trainer")
    added = httpx.post(f"{gw.url}/api/datasets", params={"name": "quickstart"}, content=DATA.read_bytes(),
                       headers={"Authorization": f"Bearer {trainer}", "Content-Type": "application/x-ndjson"})
    assert added.status_code == 201, added.text
    return trainer


def test_a_trainer_naming_a_rendezvous_store_is_refused_and_the_store_sees_no_connection(gateway, store,
                                                                                       tiny_models_dir):
    """Had the attack worked, the worker would have launched torchrun against the trainer's store:
    the fake store would list a connection from the appliance, and a run would be queued."""
    gw = gateway
    trainer = trainer_with_dataset(gw)
    worker = WorkerProcess(gw.settings.home)
    endpoint = f"127.0.0.1:{store.port}"
    try:
        attempts = [
            (submit(gw, trainer, {"nnodes": 2, "rdzv_endpoint": endpoint, "epochs": 1}), "rdzv_endpoint"),
            (submit(gw, trainer, {"nproc_per_node": 2, "rdzv_endpoint": endpoint, "epochs": 1}), "rdzv_endpoint"),
            (submit(gw, trainer, {"nproc_per_node": 2, "master_addr": "127.0.0.1", "master_port": store.port}),
             "master_addr"),
            (submit(gw, trainer, {"nproc_per_node": 2}, [f"finetune.rdzv_endpoint={endpoint}"]), "rdzv_endpoint"),
        ]
        for response, field in attempts:
            assert response.status_code == 400, response.text
            message = response.json()["error"]["message"]
            assert f"stage 'finetune' with: {field}: where training runs is the operator's choice" in message
            assert "AIRLOCK_TRAINING_HOSTS" in message
        time.sleep(QUIET_S)
        assert worker.proc.poll() is None, worker.log.read_text()[-2000:]  # it was there to launch
    finally:
        worker.stop()
    assert store.accepted == []
    assert gw.meta.query("SELECT id FROM runs") == []
    # The store does record connections: the appliance simply never made one.
    socket.create_connection(("127.0.0.1", store.port), timeout=5).close()
    deadline = time.monotonic() + 5
    while not store.accepted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(store.accepted) == 1


def test_more_hosts_than_the_operator_configured_are_refused_with_the_numbers(tmp_path, tiny_models_dir):
    """Had it worked, a run would wait for hosts the operator never listed; the hosts the
    operator did list are taken."""
    for hosts, nnodes, expected in (("", 2, "nnodes 2 is more than the 0 training host(s)"),
                                    ("10.9.0.1,10.9.0.2", 3, "nnodes 3 is more than the 2 training host(s)")):
        for gw in run_gateway(gateway_settings(tmp_path / f"home-{nnodes}", training_hosts=hosts)):
            trainer = trainer_with_dataset(gw)
            response = submit(gw, trainer, {"nnodes": nnodes})
            assert response.status_code == 400, response.text
            message = response.json()["error"]["message"]
            assert f"stage 'finetune' with: {expected}" in message and "AIRLOCK_TRAINING_HOSTS" in message
            assert gw.meta.query("SELECT id FROM runs") == []
            if hosts:
                assert submit(gw, trainer, {"nnodes": 2}).status_code == 202
