"""The worker's Prometheus metrics, served on AIRLOCK_WORKER_METRICS_PORT (127.0.0.1 unless
AIRLOCK_WORKER_METRICS_HOST says otherwise; 0, the default, serves none).

Read when scraped, so they are never stale: runs by state (from SQLite), what this worker has
handed out of its CPU threads, memory and GPUs, the tokens per second of each run's latest step,
and each GPU's memory in use (from nvidia-smi; no CUDA is initialised in the worker).
"""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily

from airlock.gpus import query
from airlock.states import RunState


def gpu_memory() -> list[tuple[str, float, float]]:
    """(index, used bytes, total bytes) per GPU."""
    return [(i, float(u) * 2**20, float(t) * 2**20) for i, u, t in query("index", "memory.used", "memory.total")]


class WorkerCollector:
    def __init__(self, worker) -> None:
        self.worker = worker

    def collect(self):
        meta = self.worker.airlock.meta
        runs = GaugeMetricFamily("airlock_worker_runs", "Runs by state (all runs of this appliance).", labels=["state"])
        counts = {r["status"]: r["n"] for r in meta.query("SELECT status, COUNT(*) AS n FROM runs GROUP BY status")}
        for state in RunState:
            runs.add_metric([state], counts.get(state, 0))
        yield runs
        slots = list(self.worker.slots.items())
        capacity = self.worker.capacity
        for name, unit, used, total in (
            ("cpu_threads", "CPU threads", sum(s.claim["cpu_threads"] for _, s in slots), capacity.cpu_threads),
            ("gpus", "GPUs", sum(len(s.claim["gpus"]) for _, s in slots), len(capacity.gpus)),
            ("memory_bytes", "memory (0: not accounted)", sum(s.claim["memory_mb"] for _, s in slots) * 2**20,
             capacity.memory_mb * 2**20),
        ):
            gauge = GaugeMetricFamily(f"airlock_worker_{name}", f"{unit} this worker hands out, and of those claimed.",
                                      labels=["kind"])
            gauge.add_metric(["capacity"], total)
            gauge.add_metric(["claimed"], used)
            yield gauge
        speed = GaugeMetricFamily("airlock_worker_tokens_per_second",
                                  "Trained tokens per second of the latest step of each running run.", labels=["run_id"])
        for run_id, _ in slots:
            row = meta.one("SELECT progress_json FROM stages WHERE run_id = ? AND status = 'running' "
                           "AND progress_json IS NOT NULL", (run_id,))
            progress = json.loads(row["progress_json"]) if row else {}
            if "tokens_per_second" in progress:
                speed.add_metric([run_id], progress["tokens_per_second"])
        yield speed
        memory = GaugeMetricFamily("airlock_worker_gpu_memory_bytes", "GPU memory in use and in all.",
                                   labels=["gpu", "kind"])
        for index, used, total in gpu_memory():
            memory.add_metric([index, "used"], used)
            memory.add_metric([index, "total"], total)
        yield memory


def serve_metrics(worker, host: str, port: int):
    """Start the metrics endpoint in a thread of its own; returns the server."""
    registry = CollectorRegistry()
    registry.register(WorkerCollector(worker))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server
