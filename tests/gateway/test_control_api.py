"""The control API (/api): datasets uploaded, specs in the body, every problem at once, failing
early on what the engine would refuse, and the same checks from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
import yaml

from airlock.config import REPO_ROOT

DATA = REPO_ROOT / "examples" / "datasets" / "quickstart.jsonl"
GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
# Hundreds of distinct words: far more tokens than a 512-token context, whatever merges BPE learnt.
LONG = {"messages": [{"role": "user", "content": " ".join(f"w{i}x{i * 7}" for i in range(800))},
                     {"role": "assistant", "content": "Yes."}]}
JSONL = {"Content-Type": "application/x-ndjson"}


def call(gw, method: str, path: str, key: str | None = "default", **kw) -> httpx.Response:
    headers = kw.pop("headers", {})
    if key:
        headers["Authorization"] = f"Bearer {gw.key if key == 'default' else key}"
    return httpx.request(method, f"{gw.url}{path}", headers=headers, timeout=120, **kw)


def upload(gw, key: str, name: str, body: bytes) -> httpx.Response:
    return call(gw, "POST", "/api/datasets", key, params={"name": name}, content=body, headers=dict(JSONL))


def jsonl(*records) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def spec(dataset: str, *stages: dict, **changes) -> dict:
    stages = stages or ({"name": "finetune", "uses": "finetune.lora"},)
    return {"name": "api", "base_model": "airlock-tiny", "dataset": dataset, "stages": list(stages)} | changes


def audit_actor(gw, action: str) -> str:
    return gw.meta.one("SELECT actor FROM audit WHERE action = ? ORDER BY id DESC LIMIT 1", (action,))["actor"]


def key_id(secret: str) -> str:
    return secret.split("-")[1]


def test_upload_then_submit_by_name_list_and_show(offline_gateway, tiny_models_dir):
    gw, trainer = offline_gateway, offline_gateway.new_key("trainer")
    added = upload(gw, trainer, "quickstart", DATA.read_bytes())
    assert added.status_code == 201, added.text
    row = added.json()
    assert row["name"] == "quickstart" and row["digest"].startswith("sha256:") and row["source"] == "upload"
    assert audit_actor(gw, "dataset.add") == f"key:{key_id(trainer)}"
    assert [d["digest"] for d in call(gw, "GET", "/api/datasets", trainer).json()] == [row["digest"]]
    assert call(gw, "GET", "/api/datasets/quickstart", trainer).json() == row
    assert call(gw, "GET", f"/api/datasets/{row['digest']}", trainer).json() == row

    queued = call(gw, "POST", "/api/runs", trainer, json={"spec": spec("quickstart"), "set": ["finetune.rank=4"]})
    assert queued.status_code == 202, queued.text
    run_id = queued.json()["run_id"]
    assert [r["id"] for r in call(gw, "GET", "/api/runs", trainer).json()] == [run_id]
    run = call(gw, "GET", f"/api/runs/{run_id}", trainer).json()
    assert run["status"] == "queued" and run["stages"][0]["name"] == "finetune"
    assert run["submitted_by"] == f"key:{key_id(trainer)}" == audit_actor(gw, "run.queued")
    assert run["spec"]["datasets"] == {"dataset": row["digest"]}
    assert run["spec"]["spec"]["stages"][0]["with"]["rank"] == "4"
    # The base model's folder on the host is for admins only.
    assert "path" not in run["spec"]["base_model"] and str(tiny_models_dir) not in json.dumps(run)
    admin_view = call(gw, "GET", f"/api/runs/{run_id}").json()
    assert admin_view["spec"]["base_model"]["path"] == str(tiny_models_dir / "airlock-tiny")


def test_errors_are_openai_shaped_with_every_problem(offline_gateway):
    gw = offline_gateway
    bad = call(gw, "POST", "/api/runs", json={"spec": spec("missing", {"name": "a", "uses": "shell.exec"},
                                                            base_model="nope")})
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["type"] == "invalid_request_error"
    message = error["message"]
    assert "unknown stage type 'shell.exec'" in message and "'missing' is not a stored dataset" in message
    assert "base_model" in message and "nope" in message
    # The old shape, a file on the host, is gone.
    assert call(gw, "POST", "/api/runs", json={"file": str(DATA)}).status_code == 400
    assert call(gw, "GET", "/api/runs/run-nope").status_code == 404
    assert call(gw, "GET", "/api/datasets/nope").status_code == 404
    assert call(gw, "POST", "/api/models/adp-nope/verify").status_code == 404
    assert call(gw, "GET", "/api/runs", key=None).status_code == 401
    assert call(gw, "GET", "/api/runs", key="ak-wrong").status_code == 401
    assert call(gw, "GET", "/api/models").json() == []
    assert call(gw, "GET", "/api/aliases").json() == []


def test_an_invalid_upload_lists_every_bad_line_and_stores_nothing(offline_gateway):
    gw, trainer = offline_gateway, offline_gateway.new_key("trainer")
    body = jsonl(GOOD, b"not json", GOOD, {"messages": [{"role": "bot", "content": "x"}]}, b"[1, 2]")
    resp = upload(gw, trainer, "broken", body)
    assert resp.status_code == 400
    message = resp.json()["error"]["message"]
    for line in (2, 4, 5):
        assert f"broken:{line}:" in message
    assert "broken:1:" not in message and "broken:3:" not in message
    assert call(gw, "GET", "/api/datasets", trainer).json() == []
    assert not list((gw.settings.home / "uploads").glob("*"))


def test_an_upload_needs_a_jsonl_body_and_a_name(offline_gateway):
    gw, trainer = offline_gateway, offline_gateway.new_key("trainer")
    form = call(gw, "POST", "/api/datasets", trainer, params={"name": "x"}, content=jsonl(GOOD),
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 400 and "--data-binary" in form.json()["error"]["message"]
    assert call(gw, "POST", "/api/datasets", trainer, content=jsonl(GOOD), headers=dict(JSONL)).status_code == 400
    assert upload(gw, trainer, "sha256:abc", jsonl(GOOD)).status_code == 400


def test_keys_are_created_listed_and_revoked_by_an_admin(offline_gateway):
    gw = offline_gateway
    made = call(gw, "POST", "/api/keys", json={"name": "app", "role": "trainer", "rpm": 5})
    assert made.status_code == 201, made.text
    secret = made.json()["key"]
    assert made.json()["role"] == "trainer" and made.json()["rpm"] == 5
    assert audit_actor(gw, "apikey.create") == f"key:{key_id(gw.key)}"
    assert call(gw, "GET", "/api/datasets", secret).status_code == 200
    listed = call(gw, "GET", "/api/keys").json()
    assert made.json()["id"] in [k["id"] for k in listed]
    assert secret not in json.dumps(listed) and "key_hash" not in listed[0]
    assert call(gw, "POST", "/api/keys", json={"name": "x", "role": "root"}).status_code == 400
    revoked = call(gw, "DELETE", f"/api/keys/{made.json()['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert audit_actor(gw, "apikey.revoke") == f"key:{key_id(gw.key)}"
    assert call(gw, "GET", "/api/datasets", secret).status_code == 401


def test_alias_switches_refuse_base_model_names_and_unknown_models(offline_gateway, tiny_models_dir):
    gw = offline_gateway
    base = call(gw, "PUT", "/api/aliases/airlock-tiny", json={"model_id": "adp-000000000000"})
    assert base.status_code == 400 and "base model" in base.json()["error"]["message"]
    assert call(gw, "PUT", "/api/aliases/support", json={"model_id": "adp-nope"}).status_code == 404


def test_run_errors_show_non_admins_one_line_without_paths(offline_gateway):
    gw, trainer = offline_gateway, offline_gateway.new_key("trainer")
    digest = upload(gw, trainer, "good", jsonl(GOOD)).json()["digest"]
    run_id = call(gw, "POST", "/api/runs", trainer, json={"spec": spec(digest)}).json()["run_id"]
    # What engine.py records when a stage raises something unexpected: the reason, then a traceback.
    reason = ("OSError: cannot read /srv/airlock/store/ab/cd\nTraceback (most recent call last):\n"
              '  File "/opt/airlock/src/airlock/train/recipe.py", line 9, in finetune\n')
    with gw.meta.write() as db:
        db["stages"].update((run_id, "finetune"), {"status": "failed", "error": reason})
        db["runs"].update(run_id, {"status": "failed", "error": "stage 'finetune' failed: " + reason})
    for view in (call(gw, "GET", f"/api/runs/{run_id}", trainer).json(), call(gw, "GET", "/api/runs", trainer).json()[0]):
        assert view["error"] == "stage 'finetune' failed: OSError: cannot read <path>"
    stage = call(gw, "GET", f"/api/runs/{run_id}", trainer).json()["stages"][0]
    assert stage["error"] == "OSError: cannot read <path>"
    assert call(gw, "GET", f"/api/runs/{run_id}").json()["stages"][0]["error"] == reason


# Failing early: the same problems from HTTP and from the CLI ------------------------------------


def fail_early_spec(dataset: str) -> dict:
    return spec(dataset, {"name": "finetune", "uses": "finetune.lora", "with": {"rank": 128}},
                {"name": "serve", "uses": "serve.vllm", "needs": ["finetune"], "with": {"alias": "airlock-tiny"}})


def assert_fails_early(text: str, source: str) -> None:
    assert "rank 128 is above the engine's maximum LoRA rank 8" in text
    assert "raise AIRLOCK_VLLM_MAX_LORA_RANK or lower rank" in text
    assert "alias 'airlock-tiny' is the name of a base model" in text
    assert f"{source}:2: messages:" in text and "longer than the model's context of 512 tokens" in text
    assert "raise AIRLOCK_VLLM_MAX_MODEL_LEN" in text
    assert f"{source}:1:" not in text


def test_fail_early_over_http(offline_gateway, tiny_models_dir):
    gw, trainer = offline_gateway, offline_gateway.new_key("trainer")
    assert upload(gw, trainer, "long", jsonl(GOOD, LONG)).status_code == 201  # valid, just long
    resp = call(gw, "POST", "/api/runs", trainer, json={"spec": fail_early_spec("long")})
    assert resp.status_code == 400
    assert_fails_early(resp.json()["error"]["message"], "long")
    assert call(gw, "GET", "/api/runs", trainer).json() == []


def test_fail_early_from_the_cli(tmp_path, tiny_models_dir):
    (tmp_path / "long.jsonl").write_bytes(jsonl(GOOD, LONG))
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump(fail_early_spec("long.jsonl")))
    env = {**os.environ, "AIRLOCK_HOME": str(tmp_path / "home"), "AIRLOCK_MODELS_DIR": str(tiny_models_dir),
           "COLUMNS": "400"}
    cli = os.path.join(os.path.dirname(sys.executable), "airlock")
    done = subprocess.run([cli, "workflow", "run", str(tmp_path / "wf.yaml")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert_fails_early(" ".join(done.stderr.split()), "long.jsonl")


@pytest.mark.parametrize("role", ["trainer", "admin"])
def test_a_spec_naming_a_host_file_is_refused_unread(offline_gateway, tmp_path, role):
    """Over HTTP a dataset is a stored name or digest; a path is refused and the file never read."""
    gw = offline_gateway
    target, lines = host_secret_file(tmp_path)
    key = gw.key if role == "admin" else gw.new_key(role)
    body = {"spec": spec(str(target), {"name": "evaluate", "uses": "evaluate.compare",
                                       "with": {"eval_set": str(target)}})}
    resp = call(gw, "POST", "/api/runs", key, json=body)
    assert resp.status_code == 400
    message = resp.json()["error"]["message"]
    assert "dataset: " in message and "evaluate.eval_set: " in message
    assert "must be uploaded first (POST /api/datasets" in message
    for line in lines:
        assert line not in resp.text
    assert call(gw, "GET", "/api/datasets", key).json() == []


def host_secret_file(tmp_path):
    """/etc/shadow where it can be read and has content; else a file holding a known secret line."""
    shadow = "/etc/shadow"
    try:
        with open(shadow, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        lines = []
    if lines:
        return shadow, lines
    secret = tmp_path / "secret.txt"
    secret.write_text("root:$6$known-secret-line$:19000:0:99999:7:::\n")
    return secret, [secret.read_text().strip()]


def test_the_run_queue_over_http_keeps_each_trainer_to_its_own_runs(offline_gateway, tiny_models_dir):
    gw = offline_gateway
    owner, other, admin = gw.new_key("trainer"), gw.new_key("trainer"), gw.key
    assert upload(gw, owner, "quickstart", DATA.read_bytes()).status_code == 201
    run_id = call(gw, "POST", "/api/runs", owner, json={"spec": spec("quickstart", priority="low")}).json()["run_id"]
    assert [r["id"] for r in call(gw, "GET", "/api/runs", other).json()] == []
    for method, path in (("GET", f"/api/runs/{run_id}"), ("POST", f"/api/runs/{run_id}/cancel")):
        refused = call(gw, method, path, other)
        assert refused.status_code == 404 and "that you can see" in refused.json()["error"]["message"]
    listed = call(gw, "GET", "/api/runs", owner, params={"state": "queued"}).json()
    assert [(r["id"], r["priority_name"], r["position"], r["owner"]) for r in listed] == \
        [(run_id, "low", 1, f"key:{key_id(owner)}")]
    raised = call(gw, "PUT", f"/api/runs/{run_id}/priority", owner, json={"priority": "high"})
    assert raised.status_code == 200 and raised.json()["priority"] == 100
    too_high = call(gw, "PUT", f"/api/runs/{run_id}/priority", owner, json={"priority": 900})
    assert too_high.status_code == 403 and "above 100" in too_high.json()["error"]["message"]
    assert call(gw, "PUT", f"/api/runs/{run_id}/priority", admin, json={"priority": 900}).json()["priority"] == 900
    assert call(gw, "POST", f"/api/runs/{run_id}/cancel", owner).json() == {"run_id": run_id, "status": "cancelled"}
    again = call(gw, "POST", f"/api/runs/{run_id}/cancel", owner)
    assert again.status_code == 409 and "already finished: cancelled" in again.json()["error"]["message"]
    resumed = call(gw, "POST", f"/api/runs/{run_id}/resume", owner, json={"time_limit": "30m"})
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    shown = call(gw, "GET", f"/api/runs/{run_id}", owner).json()
    assert shown["time_limit_s"] == 1800 and shown["checkpoints"] == [] and shown["attempts"] == 0
    inference = call(gw, "POST", f"/api/runs/{run_id}/cancel", gw.new_key("inference"))
    assert inference.status_code == 403
