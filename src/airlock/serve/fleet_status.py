"""Each replica of the engine list as `airlock status` shows it: its model, whether it answers,
its load (vLLM's own running and waiting requests and KV-cache use) and how many adapters it
holds. Read from the replicas themselves over their private sockets, with their secrets, so it
needs the home's files (the operator's view), not a gateway.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from airlock.config import Settings
from airlock.errors import AirlockError
from airlock.serve.engine import engine_client
from airlock.serve.fleet import fleet, replica_settings

LOAD = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
        "vllm:kv_cache_usage_perc": "kv_cache_use"}
TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ReplicaStatus:
    replica: str
    engine: str
    model: str
    host: str  # "" for this host
    health: str  # "ready", "not answering", or why it was not asked
    running: float | None = None
    waiting: float | None = None
    kv_cache_use: float | None = None  # 0..1
    adapters: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _load(text: str) -> dict[str, float]:
    """The load figures of one vLLM /metrics text, summed over its engine cores."""
    figures: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if (name := LOAD.get(family.name)) is not None:
            figures[name] = sum(s.value for s in family.samples)
    return figures


def replica_status(settings: Settings) -> list[ReplicaStatus]:
    statuses = []
    for replica in fleet(settings):
        common = {"replica": replica.name, "engine": replica.engine, "model": replica.model, "host": replica.host}
        if not replica.local:
            statuses.append(ReplicaStatus(**common, health="on another host: see its own `airlock status`"))
            continue
        client = engine_client(replica_settings(settings, replica))
        if not client.is_healthy(timeout=TIMEOUT_S):
            statuses.append(ReplicaStatus(**common, health="not answering"))
            continue
        try:
            figures = _load(client.metrics_text(TIMEOUT_S))
            adapters = len(client.loaded_adapters())
        except (AirlockError, httpx.HTTPError, ValueError) as exc:
            statuses.append(ReplicaStatus(**common, health=f"answers, but not its figures ({type(exc).__name__})"))
            continue
        statuses.append(ReplicaStatus(**common, health="ready", adapters=adapters, **figures))
    return statuses
