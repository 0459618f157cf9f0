"""Scale-out: two processes on the CPU (gloo) train the same losses as one process with the same
global batch, through the command the worker launches: on one host through a store file in the
job's private folder, and as two nodes through a TCP store bound to the configured address."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from listening import listening
from waiting import wait_for

from airlock.train.config import LoraTrainConfig
from airlock.train.recipe import finetune
from airlock.train.launch import Placement
from airlock.workflow.training import child_env, launch_command, prepare

from workflow_records import RECORDS

# Relative: the two processes' micro-batches have other shapes (padding, packing), so sums are
# taken in another order and float32 rounding differs in the last digits (measured: at most
# 1.6e-7 here).
TOLERANCE = 1e-5


@pytest.mark.parametrize("packing", ["on", "off"])
def test_two_processes_train_the_losses_of_one(tiny_models_dir, tmp_path, packing):
    base = tiny_models_dir / "airlock-tiny"
    config = LoraTrainConfig(epochs=3, rank=4, batch_size=4, gradient_accumulation=1, seed=3, packing=packing)
    one = finetune(base, RECORDS, config, tmp_path / "one")
    two = config.model_copy(update={"nproc_per_node": 2})
    folder = tmp_path / "job"
    prepare(folder, base, two.model_dump(), RECORDS)
    command = launch_command(folder, two.model_dump())
    assert command[1:] == ["-m", "airlock.train.launch", str(folder)]  # no torchrun agent, no TCP store
    done = subprocess.run(command, env=child_env(1, []), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert [e["processes"] for e in events if e["kind"] == "started"] == [2]  # only the first process writes
    final = next(e for e in events if e["kind"] == "done")
    assert len(final["losses"]) == len(one.losses) == 6
    assert final["losses"] == pytest.approx(one.losses, rel=TOLERANCE)
    assert final["trained_tokens"] == one.trained_tokens
    assert (folder / "adapter" / "adapter_model.safetensors").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rdzv_bound(port: int) -> set[str]:
    return {address for address, at, _ in listening() if at == port}


def test_two_nodes_meet_at_the_configured_store_and_train_the_losses_of_one(tiny_models_dir, tmp_path):
    """Two nodes of one process each, as two hosts would run them (the second started as the
    operator starts it on its host), meeting at the store the settings name: here loopback."""
    base = tiny_models_dir / "airlock-tiny"
    config = LoraTrainConfig(epochs=2, rank=4, batch_size=4, seed=3, packing="off")
    one = finetune(base, RECORDS, config, tmp_path / "one")
    two = config.model_copy(update={"nnodes": 2})
    placement = Placement(nproc_per_node=1, nnodes=2, hosts=("127.0.0.1", "127.0.0.2"), rdzv_port=_free_port(),
                          ifname="lo")
    folders = [tmp_path / "node0", tmp_path / "node1"]
    for folder in folders:
        prepare(folder, base, two.model_dump(), RECORDS, placement=placement)
    first = subprocess.Popen(launch_command(folders[0], two.model_dump()), env=child_env(1, []),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = subprocess.Popen([sys.executable, "-m", "airlock.train.launch", str(folders[1]), "--node-rank", "1"],
                              env=child_env(1, []), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # The store is up once the first node's first process has started.
        wait_for(lambda: first.poll() is not None or rdzv_bound(placement.rdzv_port), 120, "the rendezvous store")
        bound = rdzv_bound(placement.rdzv_port)
        out = [p.communicate(timeout=300)[0] for p in (first, second)]
    finally:
        for p in (first, second):
            p.kill()
    assert first.returncode == second.returncode == 0, out[0][-3000:] + out[1][-3000:]
    assert bound == {"127.0.0.1"}  # the configured address alone, not every interface
    events = [json.loads(line) for line in (folders[0] / "events.jsonl").read_text().splitlines()]
    final = next(e for e in events if e["kind"] == "done")
    assert final["losses"] == pytest.approx(one.losses, rel=TOLERANCE)
    assert not (folders[1] / "events.jsonl").exists()  # only the first process writes


def test_a_node_rank_outside_the_run_is_refused(tmp_path, tiny_models_dir):
    config = LoraTrainConfig(nnodes=2).model_dump()
    prepare(tmp_path, tiny_models_dir / "airlock-tiny", config, RECORDS,
            placement=Placement(nnodes=2, hosts=("10.0.0.5", "10.0.0.6")))
    done = subprocess.run([sys.executable, "-m", "airlock.train.launch", str(tmp_path), "--node-rank", "2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--node-rank 2: this run has 2 node(s), ranked 0 to 1" in done.stderr
