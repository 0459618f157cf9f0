"""What a stage type is and what it gets when it runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from airlock.context import Airlock


@dataclass(frozen=True)
class StageType:
    """A registered stage type. `batch` stages are skipped on a re-run with unchanged inputs."""

    name: str
    params: type[BaseModel]
    run: Callable[["StageContext"], dict[str, Any]]
    batch: bool
    summary: str
    dataset_params: tuple[str, ...] = ()


@dataclass
class StageContext:
    airlock: Airlock
    run_id: str
    stage: str
    params: BaseModel
    base_model: dict  # {"name", "path", "digest"}
    dataset: dict  # {"digest", "records"}
    upstream: dict[str, dict] = field(default_factory=dict)  # stage name -> its outputs
    datasets: dict[str, str] = field(default_factory=dict)  # param name -> dataset digest
    claim: dict | None = None  # what the worker gave the run: {"gpus", "cpu_threads", "memory_mb"}
    # Asked by long stages at safe points: a reason to stop early (cancel, preempt, ...) or None.
    should_stop: Callable[[], str | None] = lambda: None
    _last_progress: float = 0.0

    @property
    def base_path(self) -> Path:
        return Path(self.base_model["path"])

    def find_upstream(self, key: str) -> Any:
        """The value of `key` in the outputs of the nearest stage this one needs that produced it."""
        for outputs in self.upstream.values():
            if key in outputs:
                return outputs[key]
        from airlock.errors import StageFailed

        raise StageFailed(f"stage {self.stage!r} needs an upstream stage that produces {key!r}")

    def progress(self, force: bool = False, **fields: Any) -> None:
        """Publish live progress (throttled to a few writes a second)."""
        now = time.monotonic()
        if not force and now - self._last_progress < 0.25:
            return
        self._last_progress = now
        with self.airlock.meta.write() as db:
            db["stages"].update((self.run_id, self.stage), {"progress_json": json.dumps(fields)})

    def metrics(self, name: str, values: list[tuple[int, float]]) -> None:
        with self.airlock.meta.write() as db:
            db["stage_metrics"].upsert_all(
                [{"run_id": self.run_id, "stage": self.stage, "step": s, "name": name, "value": v} for s, v in values],
                pk=("run_id", "stage", "name", "step"),
            )
