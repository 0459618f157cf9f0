"""Checking a workflow spec completely and queueing it as a run.

One core, two ways in. `submit_spec` checks everything a run will read before anything is
queued: stage types and parameters, the stage graph, the base model, every dataset, that every
record fits the model's context, and that what the run will serve fits the engine (LoRA rank,
alias). Every problem is collected and reported at once; a spec with any problem queues nothing.

- `submit` (the CLI, run by the operator on the host) reads a YAML file and uploads every
  dataset file it names, relative paths read against the file's folder, into the operator's
  namespace.
- `submit_request` (HTTP) takes the spec from the request body and finds datasets in the store
  by name or digest only: nothing a caller sends over HTTP can make the appliance read a host file.

Either way a dataset is resolved here, once, with the submitter as the reader (a plain name in
the submitter's own namespace, `@OWNER/NAME` or a digest it may read), and the run records the
digest: what anyone uploads later under the same name changes nothing for it.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ValidationError

from airlock.context import Airlock
from airlock.datasets.service import OPERATOR_READER, Reader, add_dataset, get_dataset, length_problems
from airlock.errors import AirlockError, InvalidInput, NotFound
from airlock.meta.db import now
from airlock.models.catalog import digest_cache, model_digest, resolve_base_model
from airlock.states import RunState, StageState
from airlock.train.launch import PLACEMENT_SETTINGS, too_few_hosts
from airlock.workflow import spec as specs
from airlock.workflow.queue import MAX_PRIORITY, parse_duration, parse_priority
from airlock.workflow.registry import stage_types

DatasetResolver = Callable[[str, str], str]
"""(field, value as written in the spec) -> the stored dataset's digest, or an AirlockError."""

UPLOAD_FIRST = ("over HTTP a dataset must be uploaded first (POST /api/datasets?name=NAME) and named "
                "by that name or its sha256: digest; a dataset shared with you is named @OWNER/NAME")
# Field names that place work on a host: torchrun's and torch.distributed's words among them.
PLACE_WORDS = re.compile(r"rdzv|rendezvous|endpoint|master|host|port|addr|node_rank|init_method|ifname|interface|url")
PLACE_REFUSED = ("where training runs is the operator's choice, not the workflow's: a workflow asks only for "
                 f"nnodes and nproc_per_node; the hosts and their rendezvous are the appliance's settings "
                 f"({PLACEMENT_SETTINGS}, set by the provisioning from the inventory's training hosts)")
TOO_LONG_HINT = "; raise AIRLOCK_VLLM_MAX_MODEL_LEN or shorten the record"


def submit(airlock: Airlock, path: Path | str, overrides: list[str] | None = None, *,
                actor: str) -> dict:
    """The CLI's way in: a workflow file on this host, its dataset files uploaded as it names them."""
    path = Path(path)
    raw = specs.load_raw(path)
    return submit_spec(airlock, raw, overrides, where=str(path),
                       datasets=host_files(airlock, path.parent, actor), actor=actor)


def submit_request(airlock: Airlock, raw: dict, overrides: list[str] | None = None, *,
                   actor: str, reader: Reader, max_priority: int = MAX_PRIORITY) -> dict:
    """HTTP's way in: the spec from the request body; datasets only from the store, and only
    those the caller (`reader`) may read."""
    return submit_spec(airlock, raw, overrides, where="spec", datasets=stored_only(airlock, reader), actor=actor,
                       max_priority=max_priority)


def host_files(airlock: Airlock, spec_dir: Path, actor: str) -> DatasetResolver:
    """A digest, a file on this host (uploaded on the way), or the name of a stored dataset: the
    operator's, as the operator reads on the host."""

    def resolve(field: str, value: str) -> str:
        if value.startswith("sha256:"):
            return get_dataset(airlock, value, reader=OPERATOR_READER)["digest"]
        path = specs.resolve_path(value, spec_dir)
        if path.is_file():
            return add_dataset(airlock, path, actor=actor)["digest"]
        try:
            return get_dataset(airlock, value, reader=OPERATOR_READER)["digest"]
        except NotFound:
            raise NotFound(f"file not found: {value} (and no stored dataset has that name)") from None

    return resolve


def stored_only(airlock: Airlock, reader: Reader) -> DatasetResolver:
    """A stored dataset `reader` may read, by name or digest; anything else, a path above all, is
    refused unread, with one message for a dataset that is missing and one that is not the reader's."""

    def resolve(field: str, value: str) -> str:
        try:
            return get_dataset(airlock, value, reader=reader)["digest"]
        except (NotFound, InvalidInput):
            raise InvalidInput(f"{value!r} is not a stored dataset: {UPLOAD_FIRST}") from None

    return resolve


def submit_spec(airlock: Airlock, raw: dict, overrides: list[str] | None, *, where: str,
                datasets: DatasetResolver, actor: str, max_priority: int = MAX_PRIORITY) -> dict:
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: a workflow is a mapping with name, base_model, dataset and stages")
    raw = copy.deepcopy(raw)  # overrides are applied in place; the caller's dict stays as given
    types = stage_types()
    accepts = {name: set(t.params.model_fields) for name, t in types.items()}
    problems = specs.apply_overrides(raw, specs.parse_overrides(overrides or []), accepts)
    spec = specs.parse_spec(raw, where)
    queue_fields, queue_problems = _queue_fields(spec, where, max_priority)
    problems += queue_problems
    params, stage_problems = _check_stages(spec, where, types)
    problems += specs.graph_problems(spec, where) + stage_problems + _placement_problems(airlock, spec, params, where)
    problems += _engine_problems(airlock, params, where) + _method_problems(spec, params, where)

    base = None
    try:
        base_path = resolve_base_model(airlock.settings, spec.base_model)
        digest = model_digest(base_path, cache=digest_cache(airlock.settings))
        base = {"name": spec.base_model, "path": str(base_path), "digest": digest}
    except AirlockError as exc:
        problems.append(f"{where}: base_model: {exc.message}")
    fields = _dataset_fields(spec, types)
    digests, dataset_problems = _resolve_datasets(fields, datasets, where)
    problems += dataset_problems
    if base is not None:
        problems += _length_problems(airlock, base, fields, digests, where)
    if problems:
        raise InvalidInput(f"{where}: the workflow has {len(problems)} problem(s); nothing was run", problems=problems)
    queue_fields["resources_json"] = json.dumps(_resources(airlock, spec, base, params))
    return _queue(airlock, spec, base, digests, actor, queue_fields)


def _check_stages(spec: specs.WorkflowSpec, where: str, types: dict) -> tuple[dict[str, BaseModel], list[str]]:
    """Each stage's validated parameters by stage name, and every problem."""
    params, problems = {}, []
    for stage in spec.stages:
        stage_type = types.get(stage.uses)
        if stage_type is None:
            problems.append(f"{where}: stage {stage.name!r} uses unknown stage type {stage.uses!r} "
                            f"(known: {', '.join(sorted(types))})")
            continue
        try:
            # A field naming a host or port gets its own error (_placement_problems), not "extra".
            asked = {k: v for k, v in stage.with_.items() if not names_a_place(k)}
            params[stage.name] = stage_type.params.model_validate(asked)
        except ValidationError as exc:
            problems += specs.pydantic_problems(f"{where}: stage {stage.name!r} with", exc)
    return params, problems


def names_a_place(field: str) -> bool:
    """Whether a stage parameter names a host, an address, a port or a rendezvous."""
    return PLACE_WORDS.search(field.lower()) is not None


def _placement_problems(airlock: Airlock, spec: specs.WorkflowSpec, params: dict[str, BaseModel],
                        where: str) -> list[str]:
    """Where training runs is the operator's configuration: a workflow asks for processes and
    hosts as counts, never names a host or port, and never asks for more hosts than there are."""
    problems = []
    for stage in spec.stages:
        for field in filter(names_a_place, stage.with_):
            problems.append(f"{where}: stage {stage.name!r} with: {field}: {PLACE_REFUSED}")
    hosts = len(airlock.settings.training_host_list)
    for name, p in params.items():
        if getattr(p, "nnodes", 1) > max(hosts, 1):
            problems.append(f"{where}: stage {name!r} with: {too_few_hosts(p.nnodes, hosts)}")
    return problems


def _engine_problems(airlock: Airlock, params: dict[str, BaseModel], where: str) -> list[str]:
    """What the engine would refuse at the end of a run, refused before it starts."""
    from airlock.serve.deploy import check_alias

    settings, problems = airlock.settings, []
    for name, p in params.items():
        # Every adapter a run trains is served by vLLM, which loads none above its max LoRA rank.
        rank = getattr(p, "rank", None)
        if rank is not None and rank > settings.vllm_max_lora_rank:
            problems.append(f"{where}: stage {name!r} with: rank {rank} is above the engine's maximum "
                            f"LoRA rank {settings.vllm_max_lora_rank}; raise AIRLOCK_VLLM_MAX_LORA_RANK "
                            "or lower rank")
        alias = getattr(p, "alias", None)
        if alias is not None:
            try:
                check_alias(alias, settings)
            except InvalidInput as exc:
                problems.append(f"{where}: stage {name!r} with: alias: {exc.message}")
    return problems


def _method_problems(spec: specs.WorkflowSpec, params: dict[str, BaseModel], where: str) -> list[str]:
    """Training methods this run's hardware or serving cannot carry through."""
    problems, uses = [], {s.name: s.uses for s in spec.stages}
    serves = "serve.vllm" in uses.values()
    for name, p in params.items():
        method = getattr(p, "method", None)
        if method == "qlora" and spec.resources.gpus == 0:
            problems.append(f"{where}: stage {name!r} with: method qlora needs a GPU (a 4-bit base runs on CUDA "
                            "only): set resources.gpus, or use lora")
        if method == "dora" and serves:
            problems.append(f"{where}: stage {name!r} with: method dora: vLLM does not serve DoRA adapters, and this "
                            "workflow ends in serve.vllm; use lora or rslora, or drop the serve stage")
    return problems


def _dataset_fields(spec: specs.WorkflowSpec, types: dict) -> dict[str, str]:
    """Every field that names a dataset (`dataset`, `STAGE.PARAM`) and its value as written."""
    wanted = {"dataset": spec.dataset}
    for stage in spec.stages:
        for param in getattr(types.get(stage.uses), "dataset_params", ()):
            if stage.with_.get(param) is not None:  # `null` names no dataset
                wanted[f"{stage.name}.{param}"] = str(stage.with_[param])
    return wanted


def _resolve_datasets(fields: dict[str, str], resolve: DatasetResolver,
                      where: str) -> tuple[dict[str, str], list[str]]:
    digests, problems = {}, []
    for field, value in fields.items():
        try:
            digests[field] = resolve(field, value)
        except AirlockError as exc:
            problems += [f"{field}: {p}" for p in exc.problems] or [f"{where}: {field}: {exc.message}"]
    return digests, problems


def _length_problems(airlock: Airlock, base: dict, fields: dict[str, str], digests: dict[str, str],
                     where: str) -> list[str]:
    """Records the model's template refuses or that do not fit the engine's context, by line."""
    from airlock.models.chat_tokens import ChatTokenizer

    try:
        tokenizer = ChatTokenizer(base["path"], timeout_s=airlock.settings.chat_template_timeout_s)
    except InvalidInput as exc:
        return [f"{where}: base_model: {exc.message}"]
    problems, seen = [], set()
    with tokenizer:
        for field, digest in digests.items():
            if digest in seen:
                continue
            seen.add(digest)
            # Lines are labelled as the spec names the dataset: the file the CLI read, or the name.
            found = length_problems(airlock, digest, tokenizer=tokenizer, too_long_hint=TOO_LONG_HINT,
                                    max_length=airlock.settings.vllm_max_model_len, label=fields[field])
            problems += [f"{field}: {p}" for p in found]
    return problems


def _queue_fields(spec: specs.WorkflowSpec, where: str, max_priority: int) -> tuple[dict, list[str]]:
    """The run's priority and time limit as the queue stores them, or the problems with them."""
    fields, problems = {}, []
    try:
        fields["priority"] = parse_priority(spec.priority, f"{where}: priority")
        if fields["priority"] > max_priority:
            problems.append(f"{where}: priority: {fields['priority']} is above {max_priority}, the highest "
                            "this key's role may set")
    except InvalidInput as exc:
        problems.append(exc.message)
    try:
        fields["time_limit_s"] = parse_duration(spec.time_limit, f"{where}: time_limit")
    except InvalidInput as exc:
        problems.append(exc.message)
    return fields, problems


def _resources(airlock: Airlock, spec: specs.WorkflowSpec, base: dict, params: dict[str, BaseModel]) -> dict:
    """What the run claims on the worker: GPUs, CPU threads, and memory (estimated unless given)."""
    from airlock.train.estimate import training_memory_mb

    wanted = spec.resources
    trained = [p for p in params.values() if hasattr(p, "rank") and hasattr(p, "batch_size")]
    estimate = max((training_memory_mb(Path(base["path"]), p, gpu=wanted.gpus > 0) for p in trained), default=0)
    processes = max((getattr(p, "nproc_per_node", 1) for p in trained), default=1)
    return {"gpus": wanted.gpus, "cpu_threads": wanted.cpu_threads or max(airlock.settings.worker_threads, processes),
            "memory_mb": int(wanted.memory_gb * 1024) if wanted.memory_gb else estimate,
            "memory_estimated": wanted.memory_gb is None}


def _queue(airlock: Airlock, spec: specs.WorkflowSpec, base: dict, datasets: dict, actor: str,
           queue_fields: dict) -> dict:
    run_id = "run-" + uuid.uuid4().hex[:12]
    resolved = {"spec": spec.dump(), "base_model": base, "datasets": datasets}
    with airlock.meta.write() as db:
        db["runs"].insert({"id": run_id, "workflow": spec.name, "spec_json": json.dumps(resolved),
                           "status": RunState.QUEUED, "error": None, "created_at": now(), "submitted_by": actor,
                           **queue_fields})
        for position, stage in enumerate(specs.execution_order(spec)):
            db["stages"].insert({"run_id": run_id, "name": stage.name, "uses": stage.uses,
                                 "position": position, "status": StageState.PENDING, "skipped": 0})
    airlock.meta.audit(actor, "run.queued", run_id, workflow=spec.name)
    return {"run_id": run_id, "workflow": spec.name, "status": RunState.QUEUED, "priority": queue_fields["priority"]}


def queued_spec(airlock: Airlock, run_id: str) -> dict:
    """What a run was queued with and by whom: {"spec": {spec, base_model, datasets}, "submitted_by"}."""
    row = airlock.meta.one("SELECT spec_json, submitted_by FROM runs WHERE id = ?", (run_id,))
    if row is None:
        raise NotFound(f"no run {run_id!r}; `airlock workflow list` shows the runs")
    return {"spec": json.loads(row["spec_json"]), "submitted_by": row["submitted_by"]}
