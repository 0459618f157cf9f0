"""The HTTP way into submit: datasets from the store only, the actor recorded, and token counts
that match training's without loading torch (the gateway never imports it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from airlock.datasets.service import Reader, add_dataset_upload
from airlock.errors import InvalidInput
from airlock.workflow.submit import submit_request

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
SPEC = {"name": "t", "base_model": "airlock-tiny", "dataset": "greetings",
        "stages": [{"name": "finetune", "uses": "finetune.lora", "with": {"rank": 4}}]}
TRAINER = Reader("key-abc")


def test_a_stored_name_is_queued_with_its_submitter(airlock, tiny_models_dir):
    row = add_dataset_upload(airlock, json.dumps(GOOD).encode() + b"\n", name="greetings", owner="key-abc",
                             actor="key:abc")
    queued = submit_request(airlock, SPEC, ["finetune.epochs=1"], actor="key:abc", reader=TRAINER)
    run = airlock.meta.one("SELECT spec_json, submitted_by FROM runs WHERE id = ?", (queued["run_id"],))
    assert run["submitted_by"] == "key:abc"
    assert json.loads(run["spec_json"])["datasets"] == {"dataset": row["digest"]}
    assert airlock.meta.one("SELECT actor FROM audit WHERE action = 'run.queued'")["actor"] == "key:abc"
    assert SPEC["stages"][0]["with"] == {"rank": 4}  # the caller's spec is not changed by --set


def test_paths_are_never_read_over_http(airlock, tiny_models_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(GOOD) + "\n")
    with pytest.raises(InvalidInput) as info:
        submit_request(airlock, {**SPEC, "dataset": str(data)}, actor="key:abc", reader=TRAINER)
    assert any(p.startswith("spec: dataset: ") and "must be uploaded first" in p for p in info.value.problems)
    assert airlock.meta.db["datasets"].count == 0 and airlock.meta.db["runs"].count == 0


def test_a_workflow_file_naming_a_host_or_port_is_refused_on_the_cli_too(airlock, tiny_models_dir, tmp_path):
    """The operator's own workflow files place nothing either: hosts are the appliance's settings."""
    from airlock.workflow.submit import submit

    (tmp_path / "data.jsonl").write_text(json.dumps(GOOD) + "\n")
    stage = {"name": "finetune", "uses": "finetune.lora",
             "with": {"nnodes": 2, "rdzv_endpoint": "10.0.0.5:29400", "master_port": 29500}}
    (tmp_path / "w.yaml").write_text(json.dumps({**SPEC, "dataset": "data.jsonl", "stages": [stage]}))
    with pytest.raises(InvalidInput) as info:
        submit(airlock, tmp_path / "w.yaml", actor="os:operator")
    where = str(tmp_path / "w.yaml")
    for field in ("rdzv_endpoint", "master_port"):
        assert any(p.startswith(f"{where}: stage 'finetune' with: {field}: where training runs is the operator's "
                                "choice") and "AIRLOCK_TRAINING_HOSTS" in p for p in info.value.problems)
    assert any("nnodes 2 is more than the 0 training host(s)" in p for p in info.value.problems)
    assert len(info.value.problems) == 3  # each field once: not also as an unknown parameter
    assert airlock.meta.db["runs"].count == 0


RECORDS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
    [{"role": "system", "content": "Be brief.  "}, {"role": "user", "content": "Ünïcode 🎉 and\ttabs"},
     {"role": "assistant", "content": "  Sure: 1/2, <|eos|> literal."}],
]


def test_token_counts_match_transformers(tiny_models_dir):
    from transformers import AutoTokenizer

    from airlock.models.chat_tokens import ChatTokenizer

    folder = tiny_models_dir / "airlock-tiny"
    ours, theirs = ChatTokenizer(folder), AutoTokenizer.from_pretrained(folder)
    for messages in RECORDS:
        for prompt in (False, True):
            expected = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt,
                                                  return_dict=False)
            assert ours.apply_chat_template(messages, add_generation_prompt=prompt) == list(expected)


def test_checking_a_spec_over_http_loads_no_torch(settings, tiny_models_dir):
    script = f"""
import json, sys
from airlock.context import Airlock
from airlock.datasets.service import Reader, add_dataset_upload
from airlock.workflow.submit import submit_request
airlock = Airlock.open()
add_dataset_upload(airlock, {json.dumps(json.dumps(GOOD) + chr(10))}.encode(), name="greetings", owner="key-t",
                   actor="key:t")
print(submit_request(airlock, {SPEC!r}, actor="key:t", reader=Reader("key-t"))["status"], "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={"AIRLOCK_HOME": str(settings.home), "AIRLOCK_MODELS_DIR": str(tiny_models_dir),
                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["queued", "False"]
