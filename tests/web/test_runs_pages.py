"""The runs pages over HTTP (no browser): a queued run offers cancel and a priority, a cancelled one
offers resume and reads as finished, following the state groups of airlock.states. Real gateway,
real SQLite, a run queued through /api."""

from __future__ import annotations

import httpx
from gateway_support import Gateway
from worker_support import DATA

SPEC = {"name": "pages", "base_model": "airlock-tiny", "dataset": "quickstart",
        "stages": [{"name": "finetune", "uses": "finetune.lora", "with": {"epochs": 1, "rank": 4}}]}


def test_a_queued_then_cancelled_run_offers_the_actions_its_state_allows(ui_gateway: Gateway, tiny_models_dir):
    api = httpx.Client(base_url=ui_gateway.url, headers={"Authorization": f"Bearer {ui_gateway.key}"}, timeout=60)
    api.post("/api/datasets", params={"name": "quickstart"}, content=DATA.read_bytes(),
             headers={"Content-Type": "application/x-ndjson"}).raise_for_status()
    run_id = api.post("/api/runs", json={"spec": SPEC}).json()["run_id"]
    browser = httpx.Client(base_url=ui_gateway.url, follow_redirects=False)
    assert browser.post("/sign-in", data={"key": ui_gateway.key}).status_code == 303

    queued = browser.get(f"/runs/{run_id}").text
    assert f'data-api="POST /api/runs/{run_id}/cancel"' in queued and "/resume" not in queued
    assert 'data-finished="false"' in queued and "#1 in the queue" in queued
    assert f'data-api="POST /api/runs/{run_id}/cancel"' in browser.get("/runs").text

    assert api.post(f"/api/runs/{run_id}/cancel").json()["status"] == "cancelled"
    cancelled = browser.get(f"/runs/{run_id}").text
    assert f'data-api="POST /api/runs/{run_id}/resume"' in cancelled and "/cancel" not in cancelled
    assert 'data-finished="true"' in cancelled and "not-run" in cancelled
