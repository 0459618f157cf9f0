"""Running workflows without an appliance: inline execution, failures that name their stage,
lineage records, and the CLI's exit codes. The training here is real but tiny."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from airlock.cli.main import app
from airlock.config import REPO_ROOT
from airlock.promotion.policy import set_policy
from airlock.workflow.runs import get_run, stage_metrics
from airlock.workflow.submit import submit
from airlock.workflow.worker import Worker

DATA = REPO_ROOT / "examples" / "datasets" / "quickstart.jsonl"
EVAL = REPO_ROOT / "examples" / "datasets" / "quickstart-eval.jsonl"


def workflow(tmp_path: Path, *stages: dict) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "base_model": "airlock-tiny", "dataset": str(DATA),
                                    "stages": list(stages)}))
    return path


FINETUNE = {"name": "finetune", "uses": "finetune.lora", "with": {"epochs": 1, "rank": 4, "batch_size": 4}}


def test_failing_stage_stops_the_run_and_says_why(airlock, tiny_models_dir, tmp_path):
    path = workflow(tmp_path, FINETUNE,
                    {"name": "evaluate", "uses": "evaluate.compare", "needs": ["finetune"],
                     "with": {"eval_set": str(EVAL), "min_exact_match": 0.9}},
                    {"name": "promote", "uses": "gate.promote", "needs": ["evaluate"]})
    run_id = submit(airlock, path, actor="os:test")["run_id"]
    assert Worker(airlock).run_one(run_id) == "failed"
    run = get_run(airlock, run_id)
    assert run["status"] == "failed"
    assert "stage 'evaluate' (evaluate.compare) failed" in run["error"]
    assert "under min_exact_match 0.90" in run["error"]
    statuses = {s["name"]: s["status"] for s in run["stages"]}
    assert statuses == {"finetune": "succeeded", "evaluate": "failed", "promote": "not-run"}
    finetune = run["stages"][0]
    assert finetune["inputs"]["dataset"].startswith("sha256:") and finetune["outputs"]["adapter"].startswith("sha256:")
    assert [m["step"] for m in stage_metrics(airlock, run_id, "finetune")] == [1, 2]
    assert airlock.meta.one("SELECT manifest_digest FROM models")["manifest_digest"] is None  # never signed


def test_serve_without_vllm_fails_clearly(airlock, tiny_models_dir, tmp_path):
    quickstart = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
    trained = {**FINETUNE, "with": quickstart["stages"][0]["with"]}
    path = workflow(tmp_path, trained,
                    {"name": "evaluate", "uses": "evaluate.compare", "needs": ["finetune"],
                     "with": {"eval_set": str(EVAL), "min_exact_match": 0.9}},
                    {"name": "promote", "uses": "gate.promote", "needs": ["evaluate"]},
                    {"name": "serve", "uses": "serve.vllm", "needs": ["promote"], "with": {"alias": "x"}})
    run_id = submit(airlock, path, actor="os:test")["run_id"]
    Worker(airlock).run_one(run_id)
    run = get_run(airlock, run_id)
    assert [s["status"] for s in run["stages"]] == ["succeeded", "succeeded", "succeeded", "failed"]
    assert "alias 'x' has no promotion policy, so nothing is served under it" in run["error"]
    set_policy(airlock, "x", {"approvals": 0}, actor="os:test", holder="operator")
    run_id = submit(airlock, path, actor="os:test")["run_id"]
    Worker(airlock).run_one(run_id)
    run = get_run(airlock, run_id)
    assert [s["status"] for s in run["stages"]] == ["succeeded", "succeeded", "succeeded", "failed"]
    assert "stage 'serve' (serve.vllm) failed: the engine is not running" in run["error"]
    assert "airlock up" in run["error"]
    assert airlock.meta.db["aliases"].count == 0


def test_cli_run_wait_inline_and_status(settings, tiny_models_dir, tmp_path):
    path = workflow(tmp_path, FINETUNE)
    runner = CliRunner()
    result = runner.invoke(app, ["workflow", "run", str(path), "--wait", "--json"])
    assert result.exit_code == 0, result.output
    run = json.loads(result.output[result.output.index("{"):])
    assert run["status"] == "succeeded" and run["stages"][0]["outputs"]["model_id"].startswith("adp-")
    listed = json.loads(runner.invoke(app, ["workflow", "list", "--json"]).output)
    assert listed[0]["id"] == run["id"]
    status = runner.invoke(app, ["workflow", "status", run["id"]])
    assert status.exit_code == 0 and "finetune" in status.output and "succeeded" in status.output
    missing = runner.invoke(app, ["workflow", "status", "run-nope"])
    assert missing.exit_code == 3 and "no run 'run-nope'" in missing.output


def test_cli_spec_error_exit_code(settings, tiny_models_dir, tmp_path):
    path = workflow(tmp_path, {"name": "x", "uses": "no.such"})
    result = CliRunner().invoke(app, ["workflow", "run", str(path)])
    assert result.exit_code == 2 and "unknown stage type 'no.such'" in result.output
