"""An approver key reads what it is asked to approve and changes nothing else.

The attacker holds an approver key (issued to sign off promotions) and tries to act as a trainer
or an admin: upload a dataset, queue a run, cancel or reprioritise a trainer's run, share a
dataset, mint itself an admin key, switch an alias, read the gateway's metrics. If the attack
succeeded, a reviewer would see a dataset, a run, a share, a key or an alias that an approver
made, or a changed run; here each attempt is a 403 naming the missing permission, an audit row
records it, and the database is as it was.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from gateway_support import gateway_settings, run_gateway

RECORD = json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]})
SPEC = {"name": "approver-run", "base_model": "airlock-tiny", "dataset": "facts",
        "stages": [{"name": "finetune", "uses": "finetune.lora", "with": {"rank": 8}}]}
TABLES = ("datasets", "dataset_shares", "runs", "api_keys", "aliases")


@pytest.fixture
def gateway(tmp_path, tiny_models_dir):
    yield from run_gateway(gateway_settings(tmp_path / "home", models_dir=tiny_models_dir))


def call(gw, method: str, path: str, key: str, **kw) -> httpx.Response:
    return httpx.request(method, f"{gw.url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=60, **kw)


def counts(gw) -> dict[str, int]:
    existing = {r["name"] for r in gw.meta.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {t: gw.meta.one(f"SELECT COUNT(*) AS n FROM {t}")["n"] for t in TABLES if t in existing}


def test_an_approver_changes_nothing_it_was_not_given(gateway):
    trainer, approver = gateway.new_key("trainer"), gateway.new_key("approver")
    uploaded = httpx.post(f"{gateway.url}/api/datasets?name=facts", content=RECORD + "\n", timeout=60,
                          headers={"Authorization": f"Bearer {trainer}", "Content-Type": "application/x-ndjson"})
    assert uploaded.status_code == 201, uploaded.text
    queued = call(gateway, "POST", "/api/runs", trainer, json={"spec": SPEC})
    assert queued.status_code == 202, queued.text
    run_id = queued.json()["run_id"]
    # What an approver is for: reading every dataset and run, the trainer's included.
    assert [d["digest"] for d in call(gateway, "GET", "/api/datasets", approver).json()] == [uploaded.json()["digest"]]
    assert call(gateway, "GET", f"/api/runs/{run_id}", approver).status_code == 200

    before = counts(gateway)
    run_before = gateway.meta.one("SELECT status, priority FROM runs WHERE id = ?", (run_id,))
    attempts = [
        ("POST", "/api/datasets?name=mine", {"content": RECORD + "\n",
                                              "headers": {"Content-Type": "application/x-ndjson"}}, "datasets:write"),
        ("POST", "/api/runs", {"json": {"spec": SPEC}}, "runs:write"),
        ("POST", f"/api/runs/{run_id}/cancel", {}, "runs:write"),
        ("PUT", f"/api/runs/{run_id}/priority", {"json": {"priority": "high"}}, "runs:write"),
        ("POST", "/api/datasets/share", {"json": {"dataset": uploaded.json()["digest"], "all_trainers": True}},
         "datasets:share"),
        ("POST", "/api/keys", {"json": {"name": "me-as-admin", "role": "admin"}}, "keys:admin"),
        ("PUT", "/api/aliases/prod", {"json": {"model_id": "anything"}}, "aliases:write"),
        ("GET", "/metrics", {}, "metrics"),
    ]
    for method, path, options, permission in attempts:
        headers = {"Authorization": f"Bearer {approver}", **options.pop("headers", {})}
        resp = httpx.request(method, f"{gateway.url}{path}", headers=headers, timeout=60, **options)
        assert resp.status_code == 403, (method, path, resp.status_code, resp.text)
        assert permission in resp.json()["error"]["message"], (path, resp.text)

    assert counts(gateway) == before
    assert gateway.meta.one("SELECT status, priority FROM runs WHERE id = ?", (run_id,)) == run_before
    # The refusals are audited by the gateway's recorder thread, within a second or so.
    approver_id = approver.split("-")[1]
    deadline = time.monotonic() + 10
    while True:
        refused = gateway.meta.query("SELECT detail_json FROM audit WHERE action = 'request.refused' AND subject = ?",
                                     (approver_id,))
        if len(refused) >= len(attempts) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sorted(json.loads(r["detail_json"])["permission"] for r in refused) == sorted(a[3] for a in attempts)
