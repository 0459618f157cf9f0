"""A workflow with any problem is refused whole, every problem listed, before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from airlock.errors import InvalidInput
from airlock.workflow.submit import submit

ACTOR = "os:tester"
GOOD_RECORD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def write_workflow(folder: Path, spec: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text(json.dumps(GOOD_RECORD) + "\n")
    path = folder / "wf.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def base_spec(**changes) -> dict:
    spec = {
        "name": "t",
        "base_model": "airlock-tiny",
        "dataset": "data.jsonl",
        "stages": [
            {"name": "finetune", "uses": "finetune.lora", "with": {"epochs": 1}},
            {"name": "evaluate", "uses": "evaluate.compare", "needs": ["finetune"], "with": {"eval_set": "data.jsonl"}},
        ],
    }
    spec.update(changes)
    return spec


def problems_of(airlock, path: Path, overrides=None) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        submit(airlock, path, overrides, actor=ACTOR)
    return info.value.problems


def runs(airlock) -> int:
    return airlock.meta.db["runs"].count


def test_every_spec_problem_is_reported_at_once(airlock, tiny_models_dir, tmp_path):
    spec = base_spec(base_model="no-such-model", dataset="missing.jsonl")
    spec["stages"] = [
        {"name": "a", "uses": "finetune.lora", "needs": ["c"]},
        {"name": "b", "uses": "shell.exec"},
        {"name": "c", "uses": "evaluate.compare", "needs": ["a", "ghost"], "with": {"eval_set": "nope.jsonl"}},
        {"name": "d", "uses": "finetune.lora", "with": {"rank": 0, "colour": "red"}},
    ]
    problems = problems_of(airlock, write_workflow(tmp_path, spec))
    text = "\n".join(problems)
    assert "unknown stage type 'shell.exec'" in text
    assert "needs 'ghost', which is not a stage" in text
    assert "cycle" in text and ("a -> c -> a" in text or "c -> a -> c" in text)
    assert "base_model" in text and "no-such-model" in text
    assert "dataset: file not found: missing.jsonl" in text
    assert "c.eval_set: file not found: nope.jsonl" in text
    assert "stage 'd' with: rank" in text and "colour" in text
    assert runs(airlock) == 0


def test_invalid_dataset_lines_are_reported_and_nothing_runs(airlock, tiny_models_dir, tmp_path):
    path = write_workflow(tmp_path, base_spec())
    (tmp_path / "data.jsonl").write_text('{"messages": [{"role": "bot", "content": "x"}]}\nnot json\n')
    text = "\n".join(problems_of(airlock, path))
    assert "data.jsonl:1" in text and "data.jsonl:2" in text
    assert runs(airlock) == 0


def test_set_overrides_and_unknown_override(airlock, tiny_models_dir, tmp_path):
    path = write_workflow(tmp_path, base_spec())
    text = "\n".join(problems_of(airlock, path, ["colour=red", "ghost.rank=4", "noequals"]))
    assert "--set 'noequals'" in text or "noequals" in text
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(GOOD_RECORD) + "\n")
    queued = submit(airlock, path, [f"dataset={other}", f"eval_set={other}", "finetune.rank=4"], actor=ACTOR)
    assert queued["status"] == "queued"
    stage = airlock.meta.one("SELECT spec_json FROM runs WHERE id = ?", (queued["run_id"],))
    resolved = json.loads(stage["spec_json"])
    assert resolved["spec"]["stages"][0]["with"]["rank"] == "4" or resolved["spec"]["stages"][0]["with"]["rank"] == 4


def test_not_yaml_and_missing_file(airlock, tmp_path):
    with pytest.raises(InvalidInput, match="workflow file not found"):
        submit(airlock, tmp_path / "nope.yaml", actor=ACTOR)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        submit(airlock, bad, actor=ACTOR)


def test_methods_the_hardware_or_serving_cannot_carry_are_refused(airlock, tiny_models_dir, tmp_path):
    spec = base_spec()
    spec["stages"] = [
        {"name": "q", "uses": "finetune.lora", "with": {"method": "qlora"}},
        {"name": "d", "uses": "finetune.lora", "with": {"method": "dora"}},
        {"name": "e", "uses": "finetune.lora", "with": {"early_stopping_patience": 2}},
        {"name": "serve", "uses": "serve.vllm", "needs": ["d"], "with": {"alias": "x"}},
    ]
    spec["priority"] = "urgent"
    text = "\n".join(problems_of(airlock, write_workflow(tmp_path, spec)))
    assert "stage 'q' with: method qlora needs a GPU" in text and "set resources.gpus" in text
    assert "stage 'd' with: method dora: vLLM does not serve DoRA adapters" in text
    assert "eval_every and early_stopping_patience need validation_split or validation_set" in text
    assert "priority: 'urgent' is not a priority" in text
    assert runs(airlock) == 0
