"""The engines an appliance runs: which base models, how many replicas of each, where each runs
and on which GPUs or CPU cores (AIRLOCK_ENGINES, filled by the provisioning's inventory).

Unset, the list is one engine of one replica serving AIRLOCK_SERVE_BASE_MODEL from the home's
run/engine folder, exactly the appliance as it was before the list existed. Every other replica
has a private folder of its own, run/engines/REPLICA (its socket and per-start secret), so two
replicas never share a secret, and a replica on another host is reached over TLS at the address
the list names, with that engine's secret.

The list is a JSON array; each item is an engine:

    [{"model": "airlock-tiny", "replicas": 2, "cpus": ["0", "1"]},
     {"name": "big", "model": "smollm2-135m-instruct", "gpus": ["0,1"], "tensor_parallel_size": 2}]

A mistake is refused when the settings are read, naming the engine and the field, before any
process starts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from airlock.config import Settings
from airlock.errors import InvalidInput

# A name becomes a folder, a metrics label and a word in `airlock status`: kept plain.
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
LOCAL = ""  # a replica's host: this one
MAX_REPLICAS = 16
MAX_SOCKET_PATH = 107  # bytes of sockaddr_un's sun_path, less its closing NUL


class EngineSpec(BaseModel):
    """One engine of the list: a base model served by `replicas` vLLM servers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""  # default: the model's name
    model: str
    replicas: int = Field(1, ge=1, le=MAX_REPLICAS)
    # One entry per replica, or none: the GPUs of each (vLLM's CUDA_VISIBLE_DEVICES, as many as
    # tensor_parallel_size), the CPU cores of each on a CPU host (VLLM_CPU_OMP_THREADS_BIND, such
    # as "0-3"), the host of each ("" this one; "HOST:PORT" another, reached over TLS).
    gpus: list[str] = []
    cpus: list[str] = []
    hosts: list[str] = []
    tensor_parallel_size: int = Field(1, ge=1, le=8)

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a model name (lowercase letters, digits, '.', '_', '-')")
        return value

    @model_validator(mode="after")
    def _per_replica(self) -> EngineSpec:
        if self.name and not NAME.fullmatch(self.name):
            raise ValueError(f"name {self.name!r}: lowercase letters, digits, '.', '_', '-', at most 63")
        for field in ("gpus", "cpus", "hosts"):
            given = getattr(self, field)
            if given and len(given) != self.replicas:
                raise ValueError(f"{field} names {len(given)} replicas but replicas is {self.replicas}: one "
                                 "entry per replica, or none")
        for index, group in enumerate(self.gpus):
            ids = [g.strip() for g in group.split(",")]
            if not all(i.isdigit() for i in ids) or len(ids) != self.tensor_parallel_size:
                raise ValueError(f"gpus[{index}] = {group!r}: {self.tensor_parallel_size} GPU ids, comma-separated "
                                 "(tensor_parallel_size)")
        for index, host in enumerate(self.hosts):
            if host and not re.fullmatch(r"[A-Za-z0-9.-]+:\d{1,5}", host):
                raise ValueError(f"hosts[{index}] = {host!r}: '' for this host, or HOST:PORT")
        return self

    @property
    def engine_name(self) -> str:
        return self.name or self.model


@dataclass(frozen=True)
class Replica:
    """One vLLM server of an engine."""

    engine: str
    model: str
    index: int
    folder: Path  # its socket and secret (on its own host)
    gpus: str | None  # CUDA_VISIBLE_DEVICES; None: the host's default
    cpus: str | None  # VLLM_CPU_OMP_THREADS_BIND; None: vLLM's choice
    host: str  # LOCAL or HOST:PORT
    tensor_parallel_size: int

    @property
    def name(self) -> str:
        return f"{self.engine}-{self.index}"

    @property
    def local(self) -> bool:
        return self.host == LOCAL


def parse_engines(text: str) -> list[EngineSpec]:
    """AIRLOCK_ENGINES's engines; InvalidInput names the engine and the field of a mistake."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"AIRLOCK_ENGINES is not JSON: {exc}") from None
    if not isinstance(items, list) or not items:
        raise InvalidInput("AIRLOCK_ENGINES must be a JSON array of at least one engine")
    engines = []
    for position, item in enumerate(items):
        try:
            engines.append(EngineSpec.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the engine'}: {e['msg']}" for e in exc.errors())
            label = item.get("name") or item.get("model") if isinstance(item, dict) else None
            raise InvalidInput(f"AIRLOCK_ENGINES[{position}]" + (f" ({label})" if label else "") + f": {problems}") \
                from None
    names = [e.engine_name for e in engines]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise InvalidInput(f"AIRLOCK_ENGINES names the engine {', '.join(duplicates)} more than once: give each a "
                           "name of its own")
    return engines


def fleet(settings: Settings, text: str | None = None) -> list[Replica]:
    """Every replica of the appliance's engines (AIRLOCK_ENGINES, or `text`), the first engine's
    first replica first."""
    text = settings.engines if text is None else text
    engines = parse_engines(text) if text.strip() else [EngineSpec(model=settings.serve_base_model)]
    replicas: list[Replica] = []
    for spec in engines:
        for index in range(spec.replicas):
            first = not replicas
            replicas.append(Replica(
                engine=spec.engine_name, model=spec.model, index=index,
                # The first replica keeps the folder an appliance always had (and the provisioning mounts).
                folder=settings.engine_dir if first else settings.run_dir / "engines" / f"{spec.engine_name}-{index}",
                gpus=spec.gpus[index] if spec.gpus else None, cpus=spec.cpus[index] if spec.cpus else None,
                host=spec.hosts[index] if spec.hosts else LOCAL, tensor_parallel_size=spec.tensor_parallel_size))
    return replicas


def check_socket_path(settings: Settings, replica: Replica) -> None:
    """A local replica's socket must fit a Unix socket address; vLLM would only fail to bind it."""
    socket = replica_settings(settings, replica).engine_socket
    if settings.engine_transport == "uds" and replica.local and len(bytes(socket)) > MAX_SOCKET_PATH:
        raise InvalidInput(f"engine replica {replica.name}: its socket {socket} is {len(bytes(socket))} bytes "
                           f"long, and a Unix socket path holds at most {MAX_SOCKET_PATH}: give the engine a "
                           "shorter name, or the appliance a shorter AIRLOCK_HOME")


def replica_settings(settings: Settings, replica: Replica) -> Settings:
    """The settings of one replica: its folder and its model. Its server (VllmServer) and every
    client of it (EngineClient, the gateway's Engine) then find its socket and secret as they
    find the single engine's."""
    return settings.model_copy(update={"engine_home": replica.folder, "serve_base_model": replica.model})


def replica_environment(replica: Replica) -> dict[str, str]:
    """What a replica's engine process starts with beyond the appliance's environment: its folder,
    its model, and its placement."""
    env = {"AIRLOCK_ENGINE_HOME": str(replica.folder), "AIRLOCK_SERVE_BASE_MODEL": replica.model,
           "AIRLOCK_ENGINE_TENSOR_PARALLEL_SIZE": str(replica.tensor_parallel_size)}
    if replica.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = replica.gpus
    if replica.cpus is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = replica.cpus
    return env
