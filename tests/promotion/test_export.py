"""`airlock models export` and `verify-export` through the real CLI on a real home (SQLite, the
folder store, the appliance's key): what an export holds, what its manifest signs, what is
audited, and every refusal leaving the destination as it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from gate_support import real_candidate, signed_candidate
from typer.testing import CliRunner

from airlock.cli.main import app
from airlock.config import REPO_ROOT
from airlock.errors import Forbidden, GateRefused, InvalidInput, IntegrityFailure
from airlock.models.adapters import get_model
from airlock.promotion.exports import MANIFEST_NAME
from airlock.workflow.gatekeeper import revoke


def airlock_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def exported_audit(airlock) -> list[dict]:
    rows = airlock.meta.query("SELECT actor, subject, detail_json FROM audit WHERE action = 'model.exported'")
    return [{**r, "detail": json.loads(r["detail_json"])} for r in rows]


def test_an_adapter_export_holds_its_peft_files_and_a_signed_manifest(airlock, tmp_path):
    model_id = signed_candidate(airlock, tmp_path, 3)
    out = tmp_path / "exports" / "adapter"
    out.parent.mkdir()
    done = airlock_cli("models", "export", model_id, "--out", str(out))
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", MANIFEST_NAME]
    # The same bytes as the store's: the tree the adapter's signed manifest names.
    stored = airlock.store.tree_index(get_model(airlock, model_id)["tree_digest"])
    for rel, entry in stored.items():
        assert airlock.store.get_bytes(entry["sha256"]) == (out / rel).read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["adapter"]  # no temporary sibling left behind

    verified = airlock_cli("models", "verify-export", str(out))
    assert verified.exit_code == 0, verified.output
    assert f"adapter export of {model_id}" in verified.output
    envelope = json.loads((out / MANIFEST_NAME).read_text())
    import base64

    manifest = json.loads(base64.b64decode(envelope["payload"]))
    model = get_model(airlock, model_id)
    assert manifest["files"] == stored and manifest["form"] == "adapter"
    assert manifest["adapter_manifest_digest"] == model["manifest_digest"]
    assert manifest["base_model"] == {"name": model["base_model"], "digest": model["base_digest"]}
    assert manifest["exported_by"].startswith("os:") and manifest["destination"] == str(out)
    [audit] = exported_audit(airlock)
    assert audit["subject"] == model_id and audit["detail"]["destination"] == str(out)


def test_a_merged_export_answers_as_the_base_with_the_adapter(airlock, tmp_path):
    """The adapter's own B matrices are made non-zero, so the merge really changes the weights."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_id = real_candidate(airlock, tmp_path, zero=False)
    out = tmp_path / "merged"
    done = airlock_cli("models", "export", model_id, "--out", str(out), "--merged")
    assert done.exit_code == 0, done.output
    base_dir = airlock.settings.models_dir / "airlock-tiny"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MANIFEST_NAME} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) or n.startswith("adapter_") for n in names)
    assert (out / "tokenizer_config.json").read_bytes() == (base_dir / "tokenizer_config.json").read_bytes()
    assert airlock_cli("models", "verify-export", str(out)).exit_code == 0

    adapter = airlock.store.get_tree(get_model(airlock, model_id)["tree_digest"], tmp_path / "adapter")
    ids = AutoTokenizer.from_pretrained(out)("The capital of", return_tensors="pt").input_ids
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(ids).logits
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                         adapter)(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)(ids).logits
    assert torch.allclose(merged, peft, atol=1e-4)
    assert not torch.allclose(merged, base, atol=1e-3)  # the merge changed the weights


def test_a_revoked_adapter_is_not_exported(airlock, tmp_path):
    model_id = signed_candidate(airlock, tmp_path, 4)
    revoke(airlock, model_id, "leaked training data", actor="os:test")
    out = tmp_path / "out"
    done = airlock_cli("models", "export", model_id, "--out", str(out))
    assert done.exit_code == GateRefused.exit_code, done.output
    assert "was revoked" in done.output and "leaked training data" in done.output
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    assert exported_audit(airlock) == []


@pytest.mark.parametrize("kind", ["non-empty", "file", "symlink"])
def test_an_out_that_is_not_a_new_or_empty_folder_is_refused(airlock, tmp_path, kind):
    model_id = signed_candidate(airlock, tmp_path, 5)
    out = tmp_path / "out"
    target = tmp_path / "elsewhere"
    target.mkdir()
    if kind == "non-empty":
        out.mkdir()
        (out / "notes.txt").write_text("the operator's own file")
    elif kind == "file":
        out.write_text("a file")
    else:
        out.symlink_to(target)
    before = sorted((str(p), p.is_symlink()) for p in tmp_path.rglob("*"))
    done = airlock_cli("models", "export", model_id, "--out", str(out))
    assert done.exit_code == InvalidInput.exit_code, done.output
    expected = {"non-empty": "exists and is not empty", "file": "exists and is not a folder",
                "symlink": "is a symbolic link"}[kind]
    assert f"--out {out} " in done.output and expected in done.output
    assert sorted((str(p), p.is_symlink()) for p in tmp_path.rglob("*")) == before
    assert exported_audit(airlock) == []


def test_an_out_inside_the_home_is_refused(airlock, tmp_path):
    model_id = signed_candidate(airlock, tmp_path, 8)
    out = airlock.settings.home / "store" / "exported"
    done = airlock_cli("models", "export", model_id, "--out", str(out))
    assert done.exit_code == InvalidInput.exit_code and "lies inside the appliance's home" in done.output
    assert not out.exists() and exported_audit(airlock) == []


def test_an_empty_existing_folder_is_filled(airlock, tmp_path):
    model_id = signed_candidate(airlock, tmp_path, 6)
    out = tmp_path / "empty"
    out.mkdir()
    assert airlock_cli("models", "export", model_id, "--out", str(out)).exit_code == 0
    assert (out / MANIFEST_NAME).is_file()


def test_an_export_killed_halfway_leaves_no_folder_under_the_name(airlock, tmp_path):
    """A merge takes seconds (torch, PEFT): killed with SIGKILL while the hidden sibling fills,
    the export leaves nothing under --out, and what is left is hidden and has no manifest."""
    model_id = real_candidate(airlock, tmp_path)
    out = tmp_path / "killed"
    env = {**os.environ, "AIRLOCK_HOME": str(airlock.settings.home), "PYTHONPATH": str(REPO_ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "airlock", "models", "export", model_id, "--out", str(out),
                             "--merged"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".killed.partial-*/.adapter/*")):
        assert proc.poll() is None and time.monotonic() < deadline, "the export never started writing"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert not out.exists()
    [partial] = tmp_path.glob(".killed.partial-*")
    assert not (partial / MANIFEST_NAME).exists()
    assert exported_audit(airlock) == []


def test_verify_export_names_a_missing_manifest_and_a_foreign_key(airlock, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from airlock.trust.keys import public_key_pem

    model_id = signed_candidate(airlock, tmp_path, 7)
    out = tmp_path / "out"
    assert airlock_cli("models", "export", model_id, "--out", str(out)).exit_code == 0
    other = tmp_path / "other.pub"
    other.write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    foreign = airlock_cli("models", "verify-export", str(out), "--public-key", str(other))
    assert foreign.exit_code == IntegrityFailure.exit_code and "is not signed by key" in foreign.output
    (out / MANIFEST_NAME).unlink()
    missing = airlock_cli("models", "verify-export", str(out))
    assert missing.exit_code == IntegrityFailure.exit_code and f"has no {MANIFEST_NAME}" in missing.output


def test_an_export_needs_an_existing_appliance(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRLOCK_HOME", str(tmp_path / "nowhere"))
    done = airlock_cli("models", "export", "adp-0", "--out", str(tmp_path / "out"))
    assert done.exit_code == Forbidden.exit_code and "no appliance at" in done.output
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "out").exists()
