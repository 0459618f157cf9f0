"""The run queue: priorities, owners, cancel, resume, preemption, time limits and recovery from
a kill -9, against a real worker process that trains the tiny model in real job processes."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest

from airlock.errors import Conflict, Forbidden, InvalidInput, NotFound
from airlock.workflow.queue import Caller, cancel_run, list_queue, operator, resume_run, set_priority, show_run
from waiting import wait_for
from worker_support import WorkerProcess, events, losses, progress_step, run_row, submit_training, wait_status

OPERATOR = operator("os:test")
LONG = {"epochs": 40, "checkpoint_every": 20}  # 320 steps: several seconds of training


def test_the_queue_orders_by_priority_then_arrival(airlock, tiny_models_dir, tmp_path):
    first = submit_training(airlock, tmp_path, "first", priority="low")
    second = submit_training(airlock, tmp_path, "second")
    third = submit_training(airlock, tmp_path, "third", priority="high")
    fourth = submit_training(airlock, tmp_path, "fourth")
    assert {r["id"]: r["position"] for r in list_queue(airlock, OPERATOR)} == {third: 1, second: 2, fourth: 3, first: 4}
    moved = set_priority(airlock, OPERATOR, first, 500)
    assert moved["position"] == 1 and moved["priority_name"] == "500"
    assert show_run(airlock, OPERATOR, fourth)["position"] == 4
    with pytest.raises(InvalidInput, match="'urgent' is not a priority: use low, normal, high"):
        set_priority(airlock, OPERATOR, first, "urgent")
    with pytest.raises(InvalidInput, match="time_limit: 'soon' is not a duration"):
        submit_training(airlock, tmp_path, "bad", time_limit="soon")


def test_owners_see_and_change_only_their_own_runs(airlock, tiny_models_dir, tmp_path):
    run_id = submit_training(airlock, tmp_path, "mine")  # submitted as os:test
    stranger = Caller("key:other")
    assert list_queue(airlock, stranger) == []
    with pytest.raises(NotFound, match=f"no run '{run_id}' that you can see"):
        show_run(airlock, stranger, run_id)
    with pytest.raises(NotFound):
        cancel_run(airlock, stranger, run_id)
    approver = Caller("key:approver", sees_all=True)
    assert show_run(airlock, approver, run_id)["owner"] == "os:test"
    with pytest.raises(Forbidden, match="belongs to os:test; only its owner or an admin"):
        cancel_run(airlock, approver, run_id)
    with pytest.raises(Forbidden, match="priority 500 is above 100"):
        set_priority(airlock, Caller("os:test"), run_id, 500)
    assert run_row(airlock, run_id)["status"] == "queued"  # nothing changed by any refusal


def test_cancel_of_a_queued_and_of_a_finished_run(airlock, tiny_models_dir, tmp_path):
    run_id = submit_training(airlock, tmp_path, "q")
    assert cancel_run(airlock, OPERATOR, run_id) == {"run_id": run_id, "status": "cancelled"}
    run = show_run(airlock, OPERATOR, run_id)
    assert run["status"] == "cancelled" and run["stages"][0]["status"] == "not-run"
    with pytest.raises(Conflict, match=f"run {run_id} already finished: cancelled at .*; nothing to cancel"):
        cancel_run(airlock, OPERATOR, run_id)
    with pytest.raises(Conflict, match="is queued; only a cancelled, failed or interrupted run"):
        resume_run(airlock, OPERATOR, resume_run(airlock, OPERATOR, run_id)["run_id"])


def test_kill_9_of_the_worker_at_a_random_step_resumes_with_identical_losses(airlock, tiny_models_dir, tmp_path):
    baseline = submit_training(airlock, tmp_path, "baseline", **{**LONG, "checkpoint_every": 0})
    resumed = submit_training(airlock, tmp_path, "resumed", **LONG)
    home = airlock.settings.home
    job_events = airlock.settings.training_dir / resumed / "finetune" / "events.jsonl"
    worker = WorkerProcess(home)
    try:
        wait_status(airlock, baseline, "succeeded")
        kill_at = random.randint(45, 240)
        wait_for(lambda: progress_step(airlock, resumed) >= kill_at, 180, f"step {kill_at}", every=0.02)
        # The worst moment for the kill: the worker stalls (a busy disk, a paused process) while
        # its job trains on and writes a checkpoint whose steps the worker has not read.
        worker.proc.send_signal(signal.SIGSTOP)
        read_up_to = progress_step(airlock, resumed)
        wait_for(lambda: checkpoints_in(job_events) and max(checkpoints_in(job_events)) > read_up_to, 60,
                 f"a checkpoint past step {read_up_to}", every=0.005)
        unread_checkpoint = max(checkpoints_in(job_events))
        worker.kill9()
        assert progress_step(airlock, resumed) == read_up_to < unread_checkpoint
        worker = WorkerProcess(home)  # what the supervisor does
        run = wait_status(airlock, resumed, "succeeded", "failed")
        assert run["status"] == "succeeded", run["error"]
    finally:
        worker.stop()
    assert run["attempts"] == 2 and "killed" not in (run["error"] or "")
    [resume] = events(airlock, resumed, "resumed")
    assert f"queued again to resume from its checkpoint of step {resume['step']}" in run["notice"]
    # The job may write one more checkpoint between the last look at its file and the kernel
    # ending it with its parent; never more than one.
    assert resume["step"] % 20 == 0 and unread_checkpoint <= resume["step"] <= unread_checkpoint + 20
    expected = losses(airlock, baseline)
    assert len(expected) == 320 and losses(airlock, resumed) == expected
    # Every step either attempt trained, those trained twice included, matches the baseline.
    for event in events(airlock, resumed, "step"):
        assert event["loss"] == expected[event["step"] - 1], event["step"]
    out = lambda rid: show_run(airlock, OPERATOR, rid)["stages"][0]["outputs"]  # noqa: E731
    assert out(resumed)["adapter"] == out(baseline)["adapter"]  # the same bytes
    assert out(resumed)["resumed_from"] == resume["step"]
    assert not (airlock.settings.training_dir / resumed).joinpath("finetune").exists()  # cleaned up


def checkpoints_in(events_file: Path) -> list[int]:
    """The steps of the checkpoints a job's event file announces (complete lines only)."""
    text = events_file.read_text() if events_file.exists() else ""
    return [e["step"] for e in map(json.loads, text.splitlines()[:-1] if not text.endswith("\n") else text.splitlines())
            if e["kind"] == "checkpoint"]


def test_cancel_at_a_step_then_resume_from_the_checkpoint(airlock, tiny_models_dir, tmp_path):
    run_id = submit_training(airlock, tmp_path, "c", **LONG)
    worker = WorkerProcess(airlock.settings.home)
    try:
        wait_for(lambda: progress_step(airlock, run_id) >= 30, 180, "training")
        assert cancel_run(airlock, OPERATOR, run_id)["status"] == "cancelling"
        run = wait_status(airlock, run_id, "cancelled")
        shown = show_run(airlock, OPERATOR, run_id)
        stopped_at = events(airlock, run_id, "stopped")[0]["step"]
        assert stopped_at >= 30 and stopped_at in [c["step"] for c in shown["checkpoints"]]
        assert f"cancelled at step {stopped_at} (its checkpoint is kept)" in run["error"]
        assert shown["stages"][0]["status"] == "cancelled" and all(c["bytes"] > 0 for c in shown["checkpoints"])
        with pytest.raises(Conflict, match="already finished: cancelled"):
            cancel_run(airlock, OPERATOR, run_id)
        resume_run(airlock, OPERATOR, run_id)
        run = wait_status(airlock, run_id, "succeeded", "failed")
        assert run["status"] == "succeeded", run["error"]
        assert [e["step"] for e in events(airlock, run_id, "resumed")] == [stopped_at]
    finally:
        worker.stop()


def test_a_high_priority_run_preempts_a_low_one_which_resumes_after(airlock, tiny_models_dir, tmp_path):
    low = submit_training(airlock, tmp_path, "low", priority="low", **LONG)
    worker = WorkerProcess(airlock.settings.home)
    try:
        wait_for(lambda: progress_step(airlock, low) >= 25, 180, "the low run training")
        # Different seeds: the same settings would be a cached stage, not a second training.
        later_low = submit_training(airlock, tmp_path, "later-low", priority="low", seed=7)
        high = submit_training(airlock, tmp_path, "high", priority="high", seed=6)
        preempted = wait_for(lambda: (r := run_row(airlock, low))["notice"] and "preempted" in r["notice"] and r,
                             120, "the low run to be preempted")
        assert preempted["status"] in ("queued", "claimed", "running")
        for run_id in (high, low, later_low):
            assert wait_status(airlock, run_id, "succeeded", "failed")["status"] == "succeeded"
    finally:
        worker.stop()
    started = {e["run_id"]: e["id"] for e in airlock.meta.query(
        "SELECT run_id, MAX(id) AS id FROM run_events WHERE kind = 'started' GROUP BY run_id")}
    assert started[high] < started[low] < started[later_low]  # the preempted run kept its place
    [resume] = events(airlock, low, "resumed")
    stopped = events(airlock, low, "stopped")[0]
    assert stopped["reason"] == "preempt" and resume["step"] == stopped["step"] >= 25
    assert airlock.meta.one("SELECT COUNT(*) AS n FROM audit WHERE action = 'run.preempted' AND subject = ?",
                            (low,))["n"] == 1


def test_a_time_limit_stops_the_run_with_its_checkpoint(airlock, tiny_models_dir, tmp_path):
    run_id = submit_training(airlock, tmp_path, "limited", time_limit="8s", **{**LONG, "epochs": 400})
    worker = WorkerProcess(airlock.settings.home)
    try:
        run = wait_status(airlock, run_id, "failed", "succeeded", timeout=240)
    finally:
        worker.stop()
    assert "the run's time limit of 8 s was reached at step" in run["error"]
    assert f"airlock runs resume {run_id} --time-limit" in run["error"]
    assert show_run(airlock, OPERATOR, run_id)["checkpoints"]


def test_a_run_of_two_processes_is_launched_by_the_worker(airlock, tiny_models_dir, tmp_path):
    run_id = submit_training(airlock, tmp_path, "ddp", nproc_per_node=2, batch_size=4)
    assert show_run(airlock, OPERATOR, run_id)["resources"]["cpu_threads"] == 2  # one per process
    worker = WorkerProcess(airlock.settings.home, AIRLOCK_WORKER_CPU_THREADS="2")
    try:
        run = wait_status(airlock, run_id, "succeeded", "failed")
    finally:
        worker.stop()
    assert run["status"] == "succeeded", run["error"]
    assert [e["processes"] for e in events(airlock, run_id, "started")] == [2]
    assert len(losses(airlock, run_id)) == 4


def test_a_full_disk_fails_the_run_clearly_and_keeps_the_database_and_the_earlier_checkpoint(
        airlock, tiny_models_dir, tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    from airlock.train import checkpoint

    if (os.geteuid() != 0 or shutil.which("unshare") is None) and not os.environ.get("CI"):
        pytest.skip("a tmpfs in a mount namespace needs root and unshare (CI has both: there it runs)")
    run_id = submit_training(airlock, tmp_path, "full", epochs=6, checkpoint_every=20)
    training = airlock.settings.training_dir
    training.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The worker sees a 420 KiB tmpfs where checkpoints go: room for one checkpoint, not two. It is
    # the appliance's own, 0700 (a tmpfs is 1777 by default, which the worker refuses in its home).
    env = {**os.environ, "AIRLOCK_HOME": str(airlock.settings.home)}
    worker = subprocess.Popen(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=420k,mode=0700 full {training} && "
                               f"exec {sys.executable} -m airlock worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        run = wait_status(airlock, run_id, "failed", "succeeded", timeout=180)
        # The worker's own view of the tmpfs, through its mount namespace.
        seen = [p for p in Path(f"/proc/{worker.pid}/root").glob(f"{str(training).lstrip('/')}/{run_id}/finetune/checkpoints")]
        kept = checkpoint.complete_steps(seen[0]) if seen else []
        for step in kept:
            checkpoint.check(checkpoint.path_of(seen[0], step))
    finally:
        worker.terminate()
        worker.wait(30)
    assert run["status"] == "failed"
    assert "no space left on the device holding" in run["error"] and "the checkpoint of step 20 is intact" in run["error"]
    assert kept == [20]
    stage = show_run(airlock, OPERATOR, run_id)["stages"][0]
    assert stage["status"] == "failed" and "no space left" in stage["error"]
    assert airlock.meta.one("SELECT COUNT(*) AS n FROM audit WHERE action = 'run.failed' AND subject = ?",
                            (run_id,))["n"] == 1
    assert airlock.meta.query("PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    resumable = resume_run(airlock, OPERATOR, run_id)
    assert resumable["status"] == "queued"  # and it could go on from step 20 once there is room
