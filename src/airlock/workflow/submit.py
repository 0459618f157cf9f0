"""Checking a workflow spec completely and queueing it as a run.

Everything a run will read is checked and stored before the run is queued: the base model
exists, every path exists, every dataset is valid (all problems at once), and every stage's
parameters validate. A spec with any problem queues nothing.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from pydantic import ValidationError

from airlock.context import Airlock
from airlock.datasets.service import add_dataset
from airlock.errors import AirlockError, InvalidInput
from airlock.meta.db import now
from airlock.models.catalog import model_digest, resolve_base_model
from airlock.workflow import spec as specs
from airlock.workflow.registry import stage_types


def _check_stages(spec: specs.WorkflowSpec, where: str, types: dict) -> list[str]:
    problems = []
    for stage in spec.stages:
        stage_type = types.get(stage.uses)
        if stage_type is None:
            problems.append(f"{where}: stage {stage.name!r} uses unknown stage type {stage.uses!r} "
                            f"(known: {', '.join(sorted(types))})")
            continue
        try:
            stage_type.params.model_validate(stage.with_)
        except ValidationError as exc:
            problems += specs.pydantic_problems(f"{where}: stage {stage.name!r} with", exc)
    return problems


def _store_datasets(airlock: Airlock, spec: specs.WorkflowSpec, spec_dir: Path, types: dict, tokenizer,
                    max_length: int, where: str) -> tuple[dict, list[str]]:
    """Validate and store the dataset and every dataset parameter; collect every problem."""
    digests, problems = {}, []
    wanted = [("dataset", spec.dataset)]
    for stage in spec.stages:
        for param in getattr(types.get(stage.uses), "dataset_params", ()):
            if param in stage.with_:
                wanted.append((f"{stage.name}.{param}", str(stage.with_[param])))
    for key, value in wanted:
        path = specs.resolve_path(value, spec_dir)
        if not path.is_file():
            problems.append(f"{where}: {key}: file not found: {value}")
            continue
        try:
            digests[key] = add_dataset(airlock, path, tokenizer=tokenizer, max_length=max_length)["digest"]
        except InvalidInput as exc:
            problems += [f"{key}: {p}" for p in exc.problems] or [f"{key}: {exc.message}"]
    return digests, problems


def submit(airlock: Airlock, path: Path, overrides: list[str] | None = None) -> dict:
    path = Path(path)
    where = str(path)
    types = stage_types()
    raw = specs.load_raw(path)
    accepts = {name: set(t.params.model_fields) for name, t in types.items()}
    problems = specs.apply_overrides(raw, specs.parse_overrides(overrides or []), accepts)
    spec = specs.parse_spec(raw, where)
    problems += specs.graph_problems(spec, where) + _check_stages(spec, where, types)

    base = None
    try:
        base_path = resolve_base_model(airlock.settings, spec.base_model)
        base = {"name": spec.base_model, "path": str(base_path), "digest": model_digest(base_path)}
    except AirlockError as exc:
        problems.append(f"{where}: base_model: {exc.message}")
    tokenizer = _tokenizer(base["path"]) if base else None
    datasets, dataset_problems = _store_datasets(
        airlock, spec, path.parent, types, tokenizer, airlock.settings.vllm_max_model_len, where)
    problems += dataset_problems
    if problems:
        raise InvalidInput(f"{where}: the workflow has {len(problems)} problem(s); nothing was run", problems=problems)

    run_id = "run-" + uuid.uuid4().hex[:12]
    resolved = {"spec": spec.dump(), "base_model": base, "datasets": datasets}
    with airlock.meta.write() as db:
        db["runs"].insert({"id": run_id, "workflow": spec.name, "spec_json": json.dumps(resolved),
                           "status": "queued", "error": None, "created_at": now()})
        for position, stage in enumerate(specs.execution_order(spec)):
            db["stages"].insert({"run_id": run_id, "name": stage.name, "uses": stage.uses,
                                 "position": position, "status": "pending", "skipped": 0})
    airlock.meta.audit("cli", "run.queued", run_id, workflow=spec.name)
    return {"run_id": run_id, "workflow": spec.name, "status": "queued"}


def _tokenizer(base_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_path)
