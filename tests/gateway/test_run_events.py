"""Live progress over HTTP: the server-sent events of a run trained by a real worker process,
resumable by Last-Event-ID, within the caller's role; and the worker's Prometheus metrics."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families
from vllm_fixtures import free_port
from worker_support import DATA, WorkerProcess, progress_step

SPEC = {"name": "live", "base_model": "airlock-tiny", "dataset": "quickstart",
        "stages": [{"name": "finetune", "uses": "finetune.lora",
                    "with": {"epochs": 30, "rank": 4, "batch_size": 1, "validation_split": 0.25, "eval_every": 20,
                             "checkpoint_every": 40}}]}


def read_sse(response: httpx.Response, on_event=None) -> list[dict]:
    events, current = [], {}
    for line in response.iter_lines():
        if not line:
            if current:
                current["data"] = json.loads(current.get("data", "null"))
                events.append(current)
                if on_event:
                    on_event(current)
                if current["event"] == "end":
                    return events
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            current[field] = value
    return events


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_run_streams_its_steps_and_evals_live_and_the_worker_exposes_metrics(offline_gateway, tiny_models_dir):
    gw = offline_gateway
    trainer = gw.new_key("trainer")
    auth = {"Authorization": f"Bearer {trainer}"}
    httpx.post(f"{gw.url}/api/datasets", params={"name": "quickstart"}, content=DATA.read_bytes(),
               headers={**auth, "Content-Type": "application/x-ndjson"}, timeout=60).raise_for_status()
    run_id = httpx.post(f"{gw.url}/api/runs", json={"spec": SPEC}, headers=auth, timeout=60).json()["run_id"]
    other = {"Authorization": f"Bearer {gw.new_key('trainer')}"}
    assert httpx.get(f"{gw.url}/api/runs/{run_id}/events", headers=other, timeout=10).status_code == 404

    port = free_port()
    worker = WorkerProcess(gw.settings.home, AIRLOCK_WORKER_METRICS_PORT=str(port))
    seen_running, metrics = [], {}
    try:
        def first_step(event: dict) -> None:
            if event["event"] == "step" and not seen_running:
                # The step arrived while the run was still training: the stream is live.
                seen_running.append(gw.meta.one("SELECT status FROM runs WHERE id = ?", (run_id,))["status"])
                metrics.update(scrape(port))

        with httpx.stream("GET", f"{gw.url}/api/runs/{run_id}/events", headers=auth, timeout=120) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = read_sse(response, first_step)
        done = scrape(port)
    finally:
        worker.stop()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "status" and kinds[-1] == "end" and events[-1]["data"]["status"] == "succeeded"
    steps = [e["data"] for e in events if e["event"] == "step"]
    assert [s["step"] for s in steps] == list(range(1, 181))
    assert all(s["loss"] > 0 and s["learning_rate"] > 0 and s["grad_norm"] >= 0 and s["tokens_per_second"] > 0
               for s in steps)
    evals = [e["data"] for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == list(range(20, 181, 20)) and all(e["eval_loss"] > 0 for e in evals)
    assert {"setup", "checkpoint", "done"} <= set(kinds)
    setup = next(e["data"] for e in events if e["event"] == "setup")
    assert setup["examples"] == 6 and setup["validation_examples"] == 2 and setup["packing"] is True
    assert seen_running == ["running"]
    assert metrics[("airlock_worker_runs", (("state", "running"),))] == 1
    assert metrics[("airlock_worker_cpu_threads", (("kind", "claimed"),))] == 1
    assert metrics[("airlock_worker_tokens_per_second", (("run_id", run_id),))] > 0
    assert done[("airlock_worker_runs", (("state", "succeeded"),))] == 1
    # A client that reconnects after the tenth event gets the rest, and nothing twice.
    tenth = int(events[10]["id"])
    with httpx.stream("GET", f"{gw.url}/api/runs/{run_id}/events", timeout=60,
                      headers={**auth, "Last-Event-ID": str(tenth)}) as response:
        again = [e for e in read_sse(response) if "id" in e]
    assert [int(e["id"]) for e in again] == [int(e["id"]) for e in events if "id" in e and int(e["id"]) > tenth]
    # The stage's outputs name the best evaluation, whose adapter was kept.
    run = httpx.get(f"{gw.url}/api/runs/{run_id}", headers=auth, timeout=10).json()
    outputs = run["stages"][0]["outputs"]
    best = min(evals, key=lambda e: e["eval_loss"])
    assert outputs["best_step"] == best["step"] and outputs["best_eval_loss"] == best["eval_loss"]
    assert progress_step(gw.meta, run_id) == 180
