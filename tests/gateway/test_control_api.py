"""The control API (/api) runs the same service functions as the CLI, behind the same keys."""

from __future__ import annotations

import json

import httpx
import yaml

from airlock.config import REPO_ROOT

DATA = REPO_ROOT / "examples" / "datasets" / "quickstart.jsonl"


def call(gw, method: str, path: str, key: str | None = "default", **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {gw.key if key == 'default' else key}"} if key else {}
    return httpx.request(method, f"{gw.url}{path}", headers=headers, timeout=120, **kw)


def test_submit_list_and_show_a_run(offline_gateway, tiny_models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRLOCK_MODELS_DIR", str(tiny_models_dir))
    spec = tmp_path / "wf.yaml"
    spec.write_text(yaml.safe_dump({"name": "api", "base_model": "airlock-tiny", "dataset": str(DATA),
                                    "stages": [{"name": "finetune", "uses": "finetune.lora"}]}))
    queued = call(offline_gateway, "POST", "/api/runs", json={"file": str(spec), "set": ["finetune.rank=4"]})
    assert queued.status_code == 202, queued.text
    run_id = queued.json()["run_id"]
    assert [r["id"] for r in call(offline_gateway, "GET", "/api/runs").json()] == [run_id]
    run = call(offline_gateway, "GET", f"/api/runs/{run_id}").json()
    assert run["status"] == "queued" and run["stages"][0]["name"] == "finetune"
    resolved = json.loads(offline_gateway_spec(offline_gateway, run_id))
    assert resolved["spec"]["stages"][0]["with"]["rank"] == "4"


def offline_gateway_spec(gw, run_id: str) -> str:
    from airlock.meta import open_meta

    return open_meta(gw.settings.db_path).one("SELECT spec_json FROM runs WHERE id = ?", (run_id,))["spec_json"]


def test_errors_are_openai_shaped_with_every_problem(offline_gateway, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({"name": "bad", "base_model": "nope", "dataset": "missing.jsonl",
                                    "stages": [{"name": "a", "uses": "shell.exec"}]}))
    bad = call(offline_gateway, "POST", "/api/runs", json={"file": str(spec)})
    assert bad.status_code == 400
    message = bad.json()["error"]["message"]
    assert "unknown stage type 'shell.exec'" in message and "missing.jsonl" in message and "nope" in message
    assert call(offline_gateway, "GET", "/api/runs/run-nope").status_code == 404
    assert call(offline_gateway, "POST", "/api/models/adp-nope/verify").status_code == 404
    assert call(offline_gateway, "GET", "/api/runs", key=None).status_code == 401
    assert call(offline_gateway, "GET", "/api/runs", key="ak-wrong").status_code == 401
    assert call(offline_gateway, "GET", "/api/models").json() == []
    assert call(offline_gateway, "GET", "/api/aliases").json() == []
