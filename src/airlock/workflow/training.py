"""The worker's side of a training job: prepare its folder, start it as a child process with
the run's claimed CPU threads and GPUs, relay its events into SQLite as they happen, and pass on
cancel, preemption, time limits and shutdown through its stop file (`airlock.train.job`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from airlock.children import describe_exit, die_with_parent
from airlock.errors import InvalidInput, StageFailed
from airlock.meta.db import now
from airlock.private import make_private_dir, open_private
from airlock.store import without_store_credentials
from airlock.train import checkpoint
from airlock.train.job import EVENTS, JOB, RECORDS, STOP, VALIDATION
from airlock.train.launch import Placement
from airlock.workflow.stage import StageContext

POLL_S = 0.25
STEP_METRICS = ("loss", "learning_rate", "grad_norm", "tokens_per_second")


class RunStopped(Exception):
    """Training stopped early on request, after writing a checkpoint; `reason` says why."""

    def __init__(self, reason: str, step: int | None) -> None:
        super().__init__(f"stopped ({reason}) after step {step}")
        self.reason, self.step = reason, step


def job_dir(ctx: StageContext) -> Path:
    return ctx.airlock.settings.training_dir / ctx.run_id / ctx.stage


def prepare(folder: Path, base_dir: Path, config: dict, records: list[list[dict]],
            validation: list[list[dict]] | None = None, memory_limit_mb: int = 0,
            placement: Placement | None = None) -> None:
    """The job's inputs; checkpoints of an earlier attempt stay, so the job resumes from them.
    `placement` (default: this host alone) is where the job's processes run and meet."""
    make_private_dir(folder)
    folder.chmod(0o700)
    for stale in (STOP, EVENTS):
        (folder / stale).unlink(missing_ok=True)
    adapter = folder / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    job = {"base_dir": str(base_dir), "config": config, "checkpoints": str(folder / "checkpoints"),
           "adapter_dir": str(adapter), "memory_limit_mb": memory_limit_mb,
           "placement": asdict(placement or Placement(nproc_per_node=config.get("nproc_per_node", 1)))}
    with _create(folder / JOB) as f:
        f.write(json.dumps(job, indent=2))
    for name, rows in ((RECORDS, records), (VALIDATION, validation)):
        (folder / name).unlink(missing_ok=True)
        if rows is not None:
            with _create(folder / name) as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)


def _create(path: Path):
    """A new owner-only text file (the records are the dataset's own content)."""
    return os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w", encoding="utf-8")


def child_env(threads: int, gpus: list[int]) -> dict[str, str]:
    # The job reads its folder only; the worker moves artifacts in and out of the store.
    env = without_store_credentials(dict(os.environ))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(max(threads, 1))
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)  # empty: the CPU only
    return env


def launch_command(folder: Path, config: dict) -> list[str]:
    """The job as one process, or its processes under airlock's launcher (`airlock.train.launch`:
    a private rendezvous, no torchrun agent), this host as the first node of the run."""
    if config.get("nproc_per_node", 1) == 1 and config.get("nnodes", 1) == 1:
        return [sys.executable, "-m", "airlock.train.job", str(folder)]
    return [sys.executable, "-m", "airlock.train.launch", str(folder)]


class EventReader:
    """New complete lines of events.jsonl since the last read."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


class Relay:
    """Writes a job's events into the run's progress, metrics and event stream."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx, self.last_step, self.last_checkpoint, self.final = ctx, None, None, None

    def handle(self, events: list[dict]) -> None:
        if not events:
            return
        metrics, rows = [], []
        for event in events:
            kind = event["kind"]
            if kind == "step":
                self.last_step = event
                metrics += [(event["step"], name, event[name]) for name in STEP_METRICS]
            elif kind == "eval":
                metrics.append((event["step"], "eval_loss", event["eval_loss"]))
            elif kind == "checkpoint":
                self.last_checkpoint = event["step"]
            elif kind == "resumed":  # the history up to the checkpoint, whoever read it before
                metrics += [(step, "loss", loss) for step, loss in enumerate(event.get("losses", []), start=1)]
                metrics += [(step, "eval_loss", loss) for step, loss in event.get("eval_losses", [])]
            elif kind in ("done", "stopped", "failed"):
                self.final = event
            data = {k: v for k, v in event.items() if k not in ("kind", "losses", "eval_losses", "traceback", "path")}
            rows.append({"run_id": self.ctx.run_id, "at": now(), "kind": kind,
                         "data_json": json.dumps({"stage": self.ctx.stage, **data})})
        progress = None
        if self.last_step:
            s = self.last_step
            progress = {"step": s["step"], "total": s["total_steps"], "loss": round(s["loss"], 4),
                        "tokens": s["tokens"], "elapsed_s": round(s["elapsed_s"], 2),
                        "tokens_per_second": round(s["tokens_per_second"], 1), "checkpoint": self.last_checkpoint}
            left_s = (s["total_steps"] - s["step"]) * s["elapsed_s"] / max(s["step"], 1)
        # One transaction for all a read brought: events, metrics, progress, and the gateway's
        # Retry-After while the engine sleeps for this run.
        with self.ctx.airlock.meta.write() as db:
            db["run_events"].insert_all(rows)
            db["stage_metrics"].upsert_all(
                [{"run_id": self.ctx.run_id, "stage": self.ctx.stage, "step": step, "name": n, "value": v}
                 for step, n, v in metrics], pk=("run_id", "stage", "name", "step"))
            if progress is not None:
                db["stages"].update((self.ctx.run_id, self.ctx.stage), {"progress_json": json.dumps(progress)})
                db.execute("UPDATE engine_sleep SET retry_after_s = ? WHERE run_id = ?",
                           [max(round(left_s), 1), self.ctx.run_id])


def train_in_child(ctx: StageContext, config: dict, records: list[list[dict]],
                   should_stop: Callable[[], str | None], validation: list[list[dict]] | None = None) -> dict:
    """Run the job to its end; returns the `done` event. Raises RunStopped or StageFailed."""
    folder = job_dir(ctx)
    claim = ctx.claim or {}
    try:
        placement = Placement.of(ctx.airlock.settings, config)
    except InvalidInput as exc:  # the operator removed training hosts since the run was queued
        raise StageFailed(exc.message) from None
    prepare(folder, ctx.base_path, config, records, validation,
            memory_limit_mb=claim["memory_mb"] if claim.get("memory_limit") else 0, placement=placement)
    processes = config.get("nproc_per_node", 1)
    with (folder / "train.log").open("ab") as log:
        proc = subprocess.Popen(launch_command(folder, config), stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent,
                                env=child_env(max(claim.get("cpu_threads", 1) // processes, 1), claim.get("gpus", [])))
    reader, relay, asked = EventReader(folder / EVENTS), Relay(ctx), None
    try:
        while proc.poll() is None:
            relay.handle(reader.read())
            if asked is None and (asked := should_stop()):
                (folder / ".stop").write_text(asked)
                (folder / ".stop").rename(folder / STOP)
            time.sleep(POLL_S)
    finally:
        if proc.poll() is None:  # the worker is going down with an exception: take the job along
            proc.kill()
            proc.wait()
    relay.handle(reader.read())
    final = relay.final or {}
    if final.get("kind") == "done":
        return final
    if final.get("kind") == "stopped":
        raise RunStopped(final["reason"], relay.last_checkpoint)
    at = f" at step {relay.last_step['step']}" if relay.last_step else " before its first step"
    kept = checkpoint.latest_step(folder / "checkpoints")
    resume = (f"; its checkpoint of step {kept} is kept: `airlock runs resume {ctx.run_id}`" if kept
              else "")
    if final.get("kind") == "failed":
        raise StageFailed(final["message"] + resume)
    raise StageFailed(f"the training process {describe_exit(proc.returncode)}{at} (see {folder / 'train.log'})"
                      + resume)


def list_checkpoints(settings, run_id: str) -> list[dict]:
    """The complete checkpoints a run holds now, by stage, oldest first."""
    root = settings.training_dir / run_id
    out = []
    for stage in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for step in checkpoint.complete_steps(stage / "checkpoints"):
            path = checkpoint.path_of(stage / "checkpoints", step)
            out.append({"stage": stage.name, "step": step, "bytes": sum(f.stat().st_size for f in path.iterdir()),
                        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime))})
    return out
