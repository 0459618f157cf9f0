"""A run that runs out of memory while training, for real: its job process hits the memory limit
the run named (`resources.memory_gb`), the run fails with the reason in words, the worker stays
up, the job's process is gone and its claim is released to the next run."""

from __future__ import annotations

from pathlib import Path

from worker_support import WorkerProcess, events, long_records, run_row, submit_training, wait_status

# Measured on airlock-tiny: set-up needs about 360 MiB of process data, a step of 32 records of
# about 330 tokens about 1.1 GiB, a step of one record under 450 MiB.
LIMIT_GB = 0.6


def test_out_of_memory_while_training_fails_the_run_with_the_reason_and_releases_its_claim(
        airlock, tiny_models_dir, tmp_path):
    data = long_records(tmp_path / "long.jsonl")
    big = submit_training(airlock, tmp_path, "too-big", dataset=data, resources={"memory_gb": LIMIT_GB},
                          batch_size=32, max_length=512, epochs=1)
    small = submit_training(airlock, tmp_path, "fits", dataset=data, resources={"memory_gb": LIMIT_GB},
                            batch_size=1, max_length=512, epochs=1, priority="low")
    # The worker hands out 0.7 GiB: the second run can start only once the first has let go.
    worker = WorkerProcess(airlock.settings.home, AIRLOCK_WORKER_MEMORY_GB="0.7")
    try:
        failed = wait_status(airlock, big, "failed", "succeeded", timeout=240)
        job_pid = events(airlock, big, "started")[0]["pid"]
        assert not Path(f"/proc/{job_pid}").exists(), "the job's process outlived its run"
        done = wait_status(airlock, small, "succeeded", "failed", timeout=240)
        assert worker.proc.poll() is None, "the worker went down with its run"
    finally:
        worker.stop()
    assert failed["status"] == "failed"
    error = failed["error"]
    assert "failed: out of memory on the CPU in step 1 of 2 (allocating " in error, error
    assert "within the run's limit of 614 MiB of memory (resources.memory_gb)" in error
    assert "lower batch_size (now 32) or max_length (now 512)" in error
    assert "set gradient_checkpointing: true" in error and "raise resources.memory_gb" in error
    failure = events(airlock, big, "failed")[-1]
    assert failure["out_of_memory"] is True and "can't allocate memory" in failure["detail"]
    assert done["status"] == "succeeded", done["error"]
    # One run at a time held the memory: the second started after the first had ended.
    assert run_row(airlock, small)["started_at"] >= failed["finished_at"]
