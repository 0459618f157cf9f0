"""Loading and checking a workflow spec. Nothing in a spec is imported or executed: `uses`
names a stage type from the fixed registry, and `with` is validated against that type's
parameters. Every problem is collected and reported at once, before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from airlock.datasets.names import check_name_characters

from airlock.errors import InvalidInput

TOP_LEVEL_KEYS = ("name", "base_model", "dataset", "priority", "time_limit")


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    uses: str
    needs: list[str] = []
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")

    # Before the pattern: a bidi or zero-width character is named by its code point, not only
    # reported as a mismatch of the pattern.
    @field_validator("name", mode="before")
    @classmethod
    def _printable_name(cls, value: Any) -> Any:
        return check_name_characters(value, "stage name") if isinstance(value, str) else value


class Resources(BaseModel):
    """What a run claims on the worker's host; it starts only when all of it is free."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(0, ge=0, le=64, description="GPUs the run's training takes (0: the CPU)")
    cpu_threads: int | None = Field(None, ge=1, le=1024,
                                    description="CPU threads (default AIRLOCK_WORKER_THREADS)")
    memory_gb: float | None = Field(None, gt=0, description="memory to reserve, and the most the run may use "
                                    "(default: estimated, reserved only)")


class WorkflowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    base_model: str
    dataset: str
    stages: list[StageSpec] = Field(min_length=1)
    priority: str | int = "normal"
    time_limit: str | int | None = None
    resources: Resources = Field(default_factory=Resources)

    @field_validator("name", mode="before")
    @classmethod
    def _printable_name(cls, value: Any) -> Any:
        return check_name_characters(value, "run name") if isinstance(value, str) else value

    def stage(self, name: str) -> StageSpec:
        return next(s for s in self.stages if s.name == name)

    def dump(self) -> dict:
        return self.model_dump(by_alias=True)


def pydantic_problems(where: str, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]).replace("with_", "with")
        out.append(f"{where}: {loc}: {err['msg']}" if loc else f"{where}: {err['msg']}")
    return out


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    overrides, problems = {}, []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {pair!r}: expected KEY=VALUE")
        else:
            overrides[key.strip()] = value
    if problems:
        raise InvalidInput("invalid --set option", problems=problems)
    return overrides


def load_raw(path: Path) -> dict:
    where = str(path)
    if not path.is_file():
        raise InvalidInput(f"workflow file not found: {where}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: a workflow is a mapping with name, base_model, dataset and stages")
    return raw


def apply_overrides(raw: dict, overrides: dict[str, str], accepts: dict[str, set[str]]) -> list[str]:
    """Apply `--set` values. `KEY` sets a top-level field, or that parameter in every stage whose
    type accepts it; `STAGE.KEY` sets it in one stage. Returns problems instead of raising."""
    problems = []
    stages = [s for s in raw.get("stages") or [] if isinstance(s, dict)]
    for key, value in overrides.items():
        if key in TOP_LEVEL_KEYS:
            raw[key] = value
            continue
        stage_name, _, param = key.rpartition(".")
        targets = [s for s in stages if (s.get("name") == stage_name if stage_name else param in accepts.get(s.get("uses"), set()))]
        if not targets:
            problems.append(f"--set {key}: no stage {'named ' + stage_name if stage_name else 'takes a parameter ' + repr(param)}")
        for stage in targets:
            stage.setdefault("with", {})
            stage["with"][param] = value
    return problems


def parse_spec(raw: dict, where: str) -> WorkflowSpec:
    try:
        return WorkflowSpec.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"{where}: invalid workflow", problems=pydantic_problems(where, exc)) from None


def graph_problems(spec: WorkflowSpec, where: str) -> list[str]:
    problems, names = [], [s.name for s in spec.stages]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{where}: stage name {dup!r} is used more than once")
    for stage in spec.stages:
        for need in stage.needs:
            if need not in names:
                problems.append(f"{where}: stage {stage.name!r} needs {need!r}, which is not a stage of this workflow")
    if cycle := find_cycle(spec):
        problems.append(f"{where}: the stages form a cycle: {' -> '.join(cycle)}")
    return problems


def find_cycle(spec: WorkflowSpec) -> list[str] | None:
    needs = {s.name: [n for n in s.needs] for s in spec.stages}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in needs.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt in needs and state.get(nxt) is None and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for name in needs:
        if state.get(name) is None and (found := visit(name, [name])):
            return found
    return None


def execution_order(spec: WorkflowSpec) -> list[StageSpec]:
    """Stages in the order written, each moved after everything it needs."""
    done: list[str] = []
    pending = list(spec.stages)
    while pending:
        ready = next(s for s in pending if all(n in done for n in s.needs))
        done.append(ready.name)
        pending.remove(ready)
    return [spec.stage(n) for n in done]


def resolve_path(value: str, spec_dir: Path) -> Path:
    """Relative paths are read against the workflow file's folder, then the current folder."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    for base in (spec_dir, Path.cwd()):
        if (base / path).exists():
            return (base / path).resolve()
    return (spec_dir / path).resolve()
