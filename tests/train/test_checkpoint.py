"""Checkpoints of the LoRA recipe: exact resume, atomic writes, and refusal of anything that is
not safetensors or JSON. Training is real (the tiny reference model), in this process and in
the job's own process."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airlock.errors import IntegrityFailure
from airlock.store.base import sha256_file
from airlock.train import checkpoint
from airlock.train.config import LoraTrainConfig
from airlock.train.recipe import Controls, finetune

from workflow_records import RECORDS

CONFIG = LoraTrainConfig(epochs=3, rank=4, batch_size=3, seed=1, dropout=0.1, checkpoint_every=2)


def stop_after(calls: int):
    seen = [0]

    def should_stop() -> str | None:
        seen[0] += 1
        return "preempt" if seen[0] == calls else None

    return should_stop


@pytest.fixture
def base(tiny_models_dir) -> Path:
    return tiny_models_dir / "airlock-tiny"


def test_a_resumed_run_trains_exactly_as_an_uninterrupted_one(base, tmp_path):
    whole = finetune(base, RECORDS, CONFIG.model_copy(update={"checkpoint_every": 0}), tmp_path / "whole")
    folder = tmp_path / "checkpoints"
    stopped = finetune(base, RECORDS, CONFIG, tmp_path / "x", controls=Controls(checkpoints=folder,
                                                                                 should_stop=stop_after(3)))
    assert stopped.stopped == "preempt" and len(stopped.losses) == 3
    assert checkpoint.complete_steps(folder) == [2, 3]  # every 2 steps, and where it stopped
    assert sorted(p.name for p in (folder / "step-00000003").iterdir()) == sorted(checkpoint.FILES)
    resumed = finetune(base, RECORDS, CONFIG, tmp_path / "resumed", controls=Controls(checkpoints=folder))
    assert resumed.resumed_from == 3
    assert resumed.losses == whole.losses  # dropout on: the generators were restored too
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert sha256_file(tmp_path / "resumed" / name) == sha256_file(tmp_path / "whole" / name)


def test_only_the_two_newest_checkpoints_are_kept(base, tmp_path):
    folder = tmp_path / "c"
    finetune(base, RECORDS, CONFIG.model_copy(update={"checkpoint_every": 1}), tmp_path / "a",
             controls=Controls(checkpoints=folder, should_stop=stop_after(7)))
    assert checkpoint.complete_steps(folder) == [6, 7]


class Exploit:
    """Unpickling this writes a marker file: the proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_is_refused_and_never_loaded(base, tmp_path):
    folder = tmp_path / "c"
    finetune(base, RECORDS, CONFIG, tmp_path / "a", controls=Controls(checkpoints=folder, should_stop=stop_after(2)))
    marker = tmp_path / "pwned"
    latest = checkpoint.path_of(folder, 2)
    (latest / "optimizer.pt").write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(IntegrityFailure, match=r"holds optimizer\.pt, which no checkpoint holds .* refused"):
        finetune(base, RECORDS, CONFIG, tmp_path / "b", controls=Controls(checkpoints=folder))
    assert not marker.exists() and not (tmp_path / "b").exists()


def test_a_flipped_byte_is_refused(base, tmp_path):
    folder = tmp_path / "c"
    finetune(base, RECORDS, CONFIG, tmp_path / "a", controls=Controls(checkpoints=folder, should_stop=stop_after(2)))
    target = checkpoint.path_of(folder, 2) / "optimizer.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(IntegrityFailure, match="optimizer.safetensors does not match the digest"):
        finetune(base, RECORDS, CONFIG, tmp_path / "b", controls=Controls(checkpoints=folder))


def _job(tmp_path: Path, base: Path, config: LoraTrainConfig) -> Path:
    from airlock.workflow.training import prepare

    folder = tmp_path / "job"
    prepare(folder, base, config.model_dump(), RECORDS)
    return folder


def _events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one_in_use(base, tmp_path):
    config = CONFIG.model_copy(update={"checkpoint_every": 1, "epochs": 40, "batch_size": 1})
    folder = _job(tmp_path, base, config)
    ckpts = folder / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "airlock.train.job", str(folder)])
    deadline = time.monotonic() + 120
    # Every step writes a checkpoint. When one is seen half-written, the job is frozen (SIGSTOP);
    # if the write is still half done, it is killed there; else it goes on and we look again.
    def cut() -> list:
        return [p for p in ckpts.iterdir() if p.name.startswith(".partial-")] if ckpts.is_dir() else []

    while time.monotonic() < deadline and proc.poll() is None:
        if cut() and checkpoint.complete_steps(ckpts):
            os.kill(proc.pid, signal.SIGSTOP)
            if cut():
                os.kill(proc.pid, signal.SIGKILL)
                break
            os.kill(proc.pid, signal.SIGCONT)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the job ended before it could be killed mid-write"
    cut = [p.name for p in ckpts.iterdir() if p.name.startswith(".partial-")]
    assert cut, "the kill did not land during a write"
    previous = checkpoint.latest_step(ckpts)
    assert int(cut[0].rsplit("-", 1)[1]) > previous  # the cut one is newer than any complete one
    from airlock.workflow.training import prepare

    prepare(folder, base, config.model_dump(), RECORDS)  # the worker's next attempt
    subprocess.run([sys.executable, "-m", "airlock.train.job", str(folder)], check=True, timeout=300)
    events = _events(folder)
    assert [e["step"] for e in events if e["kind"] == "resumed"] == [previous]
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".partial-")]
    whole = finetune(base, RECORDS, config.model_copy(update={"checkpoint_every": 0}), tmp_path / "whole")
    assert next(e for e in events if e["kind"] == "done")["losses"] == whole.losses


def test_disk_full_during_a_checkpoint_fails_clearly_and_keeps_the_earlier_one(base, tmp_path):
    if (os.geteuid() != 0 or shutil.which("unshare") is None) and not os.environ.get("CI"):
        pytest.skip("a tmpfs in a mount namespace needs root and unshare (CI has both: there it runs)")
    config = CONFIG.model_copy(update={"checkpoint_every": 2, "epochs": 4})
    folder = _job(tmp_path, base, config)
    ckpts = folder / "checkpoints"
    ckpts.mkdir()
    # Room for one checkpoint (about 270 KiB here) and a half: the second does not fit beside it.
    script = (f"mount -t tmpfs -o size=420k airlock-full {ckpts} && "
              f"{sys.executable} -m airlock.train.job {folder}; "
              f"{sys.executable} -c 'import sys; from pathlib import Path; from airlock.train import checkpoint; "
              f"c = Path(sys.argv[1]); print(\"complete\", checkpoint.complete_steps(c)); "
              f"[checkpoint.check(checkpoint.path_of(c, s)) for s in checkpoint.complete_steps(c)]; print(\"intact\")' {ckpts}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert "complete [2]" in done.stdout and "intact" in done.stdout, done.stdout + done.stderr
    failed = next(e for e in _events(folder) if e["kind"] == "failed")
    assert ("no space left on the device holding" in failed["message"]
            and "checkpoint of step 4" in failed["message"] and "step 2 is intact" in failed["message"])
