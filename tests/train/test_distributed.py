"""Scale-out on torchrun: two processes on the CPU (gloo) train the same losses as one process
with the same global batch, through the command the worker launches."""

from __future__ import annotations

import json
import subprocess

import pytest

from airlock.train.config import LoraTrainConfig
from airlock.train.recipe import finetune
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
    command = launch_command(folder, two.model_dump(), "run-test")
    assert command[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=2"] and "--standalone" in command
    done = subprocess.run(command, env=child_env(1, []), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert [e["processes"] for e in events if e["kind"] == "started"] == [2]  # only the first process writes
    final = next(e for e in events if e["kind"] == "done")
    assert len(final["losses"]) == len(one.losses) == 6
    assert final["losses"] == pytest.approx(one.losses, rel=TOLERANCE)
    assert final["trained_tokens"] == one.trained_tokens
    assert (folder / "adapter" / "adapter_model.safetensors").exists()


def test_several_hosts_need_a_rendezvous():
    with pytest.raises(ValueError, match="nnodes above 1 needs rdzv_endpoint"):
        LoraTrainConfig(nnodes=2)
    config = LoraTrainConfig(nnodes=2, nproc_per_node=2, rdzv_endpoint="10.0.0.5:29400").model_dump()
    command = launch_command(tmp := __import__("pathlib").Path("/job"), config, "run-x")
    assert "--rdzv_endpoint=10.0.0.5:29400" in command and "--rdzv_id=run-x" in command and str(tmp) in command
