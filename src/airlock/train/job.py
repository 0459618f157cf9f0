"""One training job in its own process: `python -m airlock.train.job JOB_DIR`.

The worker prepares JOB_DIR and starts this process (or torchrun starts one per rank), so a
crash, an out-of-memory error or a hungry run never takes the worker down, the GPU memory is
released when the process ends, and the job's CPU threads and GPUs are exactly what it claimed.
It touches neither the database nor the store:

- in:  `job.json` (base model folder, training config, where checkpoints and the adapter go),
       `records.jsonl` (the dataset as normalised chat messages, one record per line) and,
       when the run has a validation set of its own, `validation.jsonl`;
- out: `events.jsonl`, one JSON object per line, appended and flushed as they happen:
       `started`, `setup`, `resumed`, `step`, `eval`, `checkpoint`, then one of `done`,
       `stopped` or `failed`;
- control: the file `stop`, whose text is the reason (cancel, preempt, time-limit, shutdown);
       the job stops at the next step boundary after a checkpoint.

It dies with its parent (a parent-death signal), so a `kill -9` of the worker leaves no
orphan training on; the run then resumes from its last complete checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

from airlock.children import die_with_parent
from airlock.train.limits import apply_memory_limit, is_out_of_memory, out_of_memory_message

JOB, RECORDS, VALIDATION, EVENTS, STOP = "job.json", "records.jsonl", "validation.jsonl", "events.jsonl", "stop"


class Events:
    """Appends events to events.jsonl; in a torchrun job only the first process writes."""

    # Step events reach the file at least this often (the worker reads it four times a second);
    # every other event at once.
    FLUSH_S = 0.1

    def __init__(self, path: Path, writes: bool = True) -> None:
        self.file = path.open("a", encoding="utf-8") if writes else None
        self.lock = threading.Lock()  # the checkpoint writer's thread emits too
        self.flushed = 0.0

    def emit(self, kind: str, **data) -> None:
        if self.file is None:
            return
        at = time.time()
        line = json.dumps({"kind": kind, "at": at, **data}) + "\n"
        with self.lock:
            self.file.write(line)
            if kind != "step" or at - self.flushed >= self.FLUSH_S:
                self.file.flush()
                self.flushed = at


def stop_reason(job_dir: Path) -> str | None:
    path = job_dir / STOP
    return (path.read_text().strip() or "stop") if path.exists() else None


def _read_jsonl(path: Path) -> list:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def run(job_dir: Path) -> int:
    from airlock.errors import AirlockError
    from airlock.train.config import LoraTrainConfig
    from airlock.train.distributed import world_from_env
    from airlock.train.recipe import Controls, finetune

    job = json.loads((job_dir / JOB).read_text())
    world = world_from_env()
    events = Events(job_dir / EVENTS, writes=world.main)
    events.emit("started", pid=os.getpid(), processes=world.size)
    plan: dict = {"total_steps": None, "done": 0}
    limit = None

    def on_step(report) -> None:
        plan["done"] = report.step
        events.emit("step", **vars(report))

    def on_setup(setup: dict) -> None:
        plan.update(setup, done=plan["done"])
        events.emit("setup", **setup)

    def on_resume(step: int, progress) -> None:
        plan["done"] = step
        # The checkpoint's loss history goes along: an attempt killed with its worker may have
        # trained past what the worker read from this file, up to this checkpoint.
        events.emit("resumed", step=step, losses=progress.losses, eval_losses=progress.eval_losses)

    try:
        if job.get("memory_limit_mb"):
            limit = apply_memory_limit(job["memory_limit_mb"], world.size)
        config = LoraTrainConfig.model_validate(job["config"])
        records = _read_jsonl(job_dir / RECORDS)
        validation = _read_jsonl(job_dir / VALIDATION) if (job_dir / VALIDATION).exists() else None
        controls = Controls(
            checkpoints=Path(job["checkpoints"]),
            should_stop=lambda: stop_reason(job_dir),
            on_step=on_step,
            on_checkpoint=lambda step, path: events.emit("checkpoint", step=step, path=str(path)),
            on_resume=on_resume,
            on_eval=lambda step, loss: events.emit("eval", step=step, eval_loss=loss),
            on_setup=on_setup,
            world=world,
        )
        result = finetune(Path(job["base_dir"]), records, config, Path(job["adapter_dir"]), controls=controls,
                          validation_records=validation)
    except AirlockError as exc:
        events.emit("failed", message=str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - any failure is reported with its reason
        if is_out_of_memory(exc):
            where = "GPU " + os.environ.get("CUDA_VISIBLE_DEVICES", "?") if "cuda" in str(exc).lower() else "the CPU"
            events.emit("failed", out_of_memory=True, message=out_of_memory_message(
                exc, where=where, steps_done=plan["done"], total=plan["total_steps"], config=job["config"],
                limit=limit), detail=str(exc)[:2000])
            return 1
        events.emit("failed", message=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8))
        return 1
    summary = {"step": len(result.losses), "steps": result.steps, "losses": result.losses, "trained_tokens": result.trained_tokens,
               "seconds": result.seconds, "resumed_from": result.resumed_from,
               "tokens_per_second": result.tokens_per_second, "eval_losses": result.eval_losses,
               "best_step": result.best_step, "best_eval_loss": result.best_eval_loss,
               "early_stopped_at": result.early_stopped_at, "packing": result.packing,
               "packing_note": result.packing_note}
    if result.stopped:
        events.emit("stopped", reason=result.stopped, **summary)
    else:
        events.emit("done", adapter_dir=str(result.adapter_dir), **summary)
    return 0


def main() -> None:
    # Under torchrun each rank's parent is torchrun's agent: it too must not outlive its parent.
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    sys.exit(run(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
