"""A real worker process (`python -m airlock worker`) on a test's home, and runs to give it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from airlock.config import REPO_ROOT
from airlock.workflow.submit import submit
from waiting import wait_for

DATA = REPO_ROOT / "examples" / "datasets" / "quickstart.jsonl"


def submit_training(airlock, tmp_path: Path, name: str, *, priority: str = "normal", time_limit: str | None = None,
                    resources: dict | None = None, dataset: Path = DATA, **params) -> str:
    """Queue a one-stage run that fine-tunes the tiny model (on the quickstart's eight records
    unless told otherwise)."""
    spec = {"name": name, "base_model": "airlock-tiny", "dataset": str(dataset), "priority": priority,
            "stages": [{"name": "finetune", "uses": "finetune.lora",
                        "with": {"epochs": 2, "rank": 4, "batch_size": 1, "seed": 5, **params}}]}
    if time_limit:
        spec["time_limit"] = time_limit
    if resources:
        spec["resources"] = resources
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return submit(airlock, path, actor="os:test")["run_id"]


class WorkerProcess:
    def __init__(self, home: Path, **env: str) -> None:
        self.log = home / f"worker-{time.monotonic_ns()}.log"
        environment = {**os.environ, "AIRLOCK_HOME": str(home), **env}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "airlock", "worker"], stdout=out,
                                         stderr=subprocess.STDOUT, env=environment, start_new_session=True)

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()


def run_row(airlock, run_id: str) -> dict:
    return airlock.meta.one("SELECT * FROM runs WHERE id = ?", (run_id,))


def progress_step(airlock_or_meta, run_id: str) -> int:
    meta = getattr(airlock_or_meta, "meta", airlock_or_meta)
    row = meta.one("SELECT progress_json FROM stages WHERE run_id = ? AND name = 'finetune'", (run_id,))
    return (json.loads(row["progress_json"] or "{}") or {}).get("step", 0)


def events(airlock, run_id: str, kind: str) -> list[dict]:
    rows = airlock.meta.query("SELECT data_json FROM run_events WHERE run_id = ? AND kind = ? ORDER BY id",
                              (run_id, kind))
    return [json.loads(r["data_json"]) for r in rows]


def wait_status(airlock, run_id: str, *statuses: str, timeout: float = 180) -> dict:
    return wait_for(lambda: (r := run_row(airlock, run_id))["status"] in statuses and r, timeout,
                    f"run {run_id} to be {' or '.join(statuses)}")


def losses(airlock, run_id: str) -> list[float]:
    rows = airlock.meta.query("SELECT value FROM stage_metrics WHERE run_id = ? AND name = 'loss' ORDER BY step",
                              (run_id,))
    return [r["value"] for r in rows]


WORDS = "the gateway checks every request before anything is loaded and records it in the audit log".split()


def long_records(path: Path, count: int = 64, words: int = 300) -> Path:
    """A dataset of `count` chats with answers of `words` words (about 1.1 tokens a word)."""
    with path.open("w") as f:
        for n in range(count):
            answer = " ".join(WORDS[(n + i) % len(WORDS)] for i in range(words))
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Describe item {n}."},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    return path
