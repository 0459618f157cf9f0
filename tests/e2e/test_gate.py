"""The promotion gate end to end, from a terminal and over /api, on the shared real appliance: an
admin's policy, a trainer's run, the staged candidate asked through the official openai client,
the author's approval refused, one person's two keys counted once, two approvers, the alias
switching, a weaker challenger refused against the champion, and a revocation.
Tests run in file order and share one protected alias."""

from __future__ import annotations

import json
import re
import subprocess

import httpx
import openai
import pytest
from openai import OpenAI

from e2e_support import AIRLOCK, QA, QUICKSTART, run_toward_alias

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
ALIAS = "gated-assistant"
DATA = QUICKSTART.parent / "datasets"
JSONL = {"content-type": "application/x-ndjson"}


def key(appliance, name: str, role: str, holder: str) -> str:
    out = appliance.cli("apikey", "create", "--name", name, "--role", role, "--holder", holder).stdout
    return re.search(r"ak-[A-Za-z0-9_-]+", out).group(0)


def api(appliance, method: str, path: str, secret: str, **kw) -> httpx.Response:
    return httpx.request(method, appliance.gateway_url + path, headers={"Authorization": f"Bearer {secret}",
                                                                        **kw.pop("headers", {})}, timeout=600, **kw)


def as_key(appliance, secret: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The CLI acting as the API key `secret` (AIRLOCK_API_KEY)."""
    env = dict(appliance.env, AIRLOCK_API_KEY=secret)
    result = subprocess.run([AIRLOCK, *args], env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


# Seeds no other module of the shared appliance trains with: the same data, settings and seed make
# the same adapter bytes, hence the same model id, and this module revokes what it trains.
SEEDS = {"first": 60, "weaker": 61, "second": 62, "third": 63}


def train(appliance, trainer: str, seed: int, *, epochs: int = 40) -> dict:
    return run_toward_alias(appliance.gateway_url, trainer, name=f"gated-{seed}", alias=ALIAS, seed=seed,
                            epochs=epochs)


def ask(client: OpenAI, model: str) -> list[bool]:
    out = []
    for m in QA:
        reply = client.chat.completions.create(model=model, messages=m[:-1], temperature=0, max_tokens=48)
        out.append(reply.choices[0].message.content.strip() == m[-1]["content"])
    return out


@pytest.fixture(scope="module")
def people(appliance, tmp_path_factory):
    found = {"trainer": key(appliance, "alice-trainer", "trainer", "alice"),
             "author_approver": key(appliance, "alice-approver", "approver", "alice"),
             "bob": key(appliance, "bob-1", "approver", "bob"), "bob2": key(appliance, "bob-2", "approver", "bob"),
             "carol": key(appliance, "carol", "approver", "carol"), "admin": key(appliance, "dave", "admin", "dave"),
             "eve": key(appliance, "eve", "inference", "eve")}
    # The quickstart's eval set is its training set (facts the model must learn): one upload.
    up = api(appliance, "POST", "/api/datasets", found["trainer"], params={"name": "facts"},
             content=(DATA / "quickstart.jsonl").read_bytes(), headers=JSONL)
    assert up.status_code == 201, up.text
    # The policy's own copy of the test: the same questions in another order, so other bytes than
    # any dataset the quickstart added (the same bytes would keep their first name).
    lines = (DATA / "quickstart-eval.jsonl").read_text().splitlines()
    eval_file = tmp_path_factory.mktemp("gate") / "gate-eval.jsonl"
    eval_file.write_text("\n".join(reversed(lines)) + "\n")
    appliance.cli("datasets", "add", str(eval_file), "--name", "gate-eval")
    return found


def test_an_admin_sets_the_policy_and_a_trainer_cannot_read_its_eval_set(appliance, people):
    appliance.cli("gate", "policy", "set", ALIAS, "--eval-set", "gate-eval", "--approvals", "2",
                  "--min-exact-match", "0.5", "--better-than-serving")
    shown = json.loads(appliance.cli("gate", "policy", "show", ALIAS).stdout)
    assert shown["approvals"] == 2 and shown["eval_set"] == "@operator/gate-eval" and shown["version"] == 1
    assert api(appliance, "GET", "/api/datasets/@operator/gate-eval", people["trainer"]).status_code == 404
    refused = api(appliance, "PUT", f"/api/gate/policies/{ALIAS}", people["trainer"], json={"approvals": 0})
    assert refused.status_code == 403 and "gate:policy" in refused.text


def test_a_trainers_run_is_staged_not_served_under_the_protected_alias(appliance, people):
    run = train(appliance, people["trainer"], seed=SEEDS["first"])
    assert run["status"] == "succeeded", run["error"]
    serve = next(s for s in run["stages"] if s["name"] == "serve")["outputs"]
    assert serve["state"] == "pending" and serve["staging_name"] == f"{ALIAS}.candidate-1"
    people["request"] = str(serve["request"])
    assert "min_exact_match 0 is weaker than the policy's 0.5, which applies" in serve["notes"][0]
    author = OpenAI(base_url=appliance.gateway_url + "/v1", api_key=people["trainer"])
    assert sum(ask(author, serve["staging_name"])) >= len(QA) - 1  # the author asks its candidate
    with pytest.raises(openai.NotFoundError):  # the production alias serves nothing yet
        author.chat.completions.create(model=ALIAS, messages=QA[0][:-1], max_tokens=4)
    stranger = OpenAI(base_url=appliance.gateway_url + "/v1", api_key=people["eve"])
    with pytest.raises(openai.NotFoundError):
        stranger.chat.completions.create(model=serve["staging_name"], messages=QA[0][:-1], max_tokens=4)
    assert serve["staging_name"] not in {m.id for m in stranger.models.list().data}
    reviewer = OpenAI(base_url=appliance.gateway_url + "/v1", api_key=people["bob"])
    assert serve["staging_name"] in {m.id for m in reviewer.models.list().data}
    mine = api(appliance, "GET", f"/api/gate/requests/{serve['request']}", people["trainer"]).json()
    assert "examples" not in mine  # the author never sees the policy's eval set
    assert mine["evaluation"] == {"eval_set": "@operator/gate-eval", "answered_by": "engine"}
    assert "examples" in api(appliance, "GET", f"/api/gate/requests/{serve['request']}", people["bob"]).json()


def test_the_author_cannot_approve_through_the_cli_nor_the_api(appliance, people):
    number = people["request"]
    cli = as_key(appliance, people["author_approver"], "gate", "approve", number, check=False)
    assert cli.returncode != 0 and f"alice is the author of request {number}" in cli.stderr
    http = api(appliance, "POST", f"/api/gate/requests/{number}/approve", people["author_approver"], json={})
    assert http.status_code == 403 and "author" in http.text
    assert api(appliance, "POST", f"/api/gate/requests/{number}/approve", people["trainer"], json={}).status_code == 403
    admin = api(appliance, "POST", f"/api/gate/requests/{number}/approve", people["admin"], json={})
    assert admin.status_code == 403 and "approvers' keys only" in admin.text


def test_two_keys_of_one_person_count_once_and_two_approvers_switch_the_alias(appliance, people):
    number = people["request"]
    first = as_key(appliance, people["bob"], "gate", "approve", number, "--comment", "answers checked")
    assert "still waiting" in first.stdout
    again = api(appliance, "POST", f"/api/gate/requests/{number}/approve", people["bob2"], json={})
    assert again.status_code == 409 and "one person counts once" in again.text
    done = api(appliance, "POST", f"/api/gate/requests/{number}/approve", people["carol"], json={"comment": "ok"})
    assert done.status_code == 200 and done.json()["state"] == "approved", done.text
    client = OpenAI(base_url=appliance.gateway_url + "/v1", api_key=people["eve"])
    assert sum(ask(client, ALIAS)) >= len(QA) - 1
    history = json.loads(appliance.cli("serve", "history", ALIAS).stdout)
    assert history[0]["approved_by"] == ["bob", "carol"] and history[0]["record"].startswith("sha256:")


def test_a_weaker_challenger_is_refused_against_the_champion_with_the_numbers(appliance, people):
    appliance.cli("gate", "policy", "set", ALIAS, "--margin", "0.5")
    run = train(appliance, people["trainer"], seed=SEEDS["weaker"], epochs=40)
    assert run["status"] == "failed"
    assert "does not beat the serving champion by the margin 0.5 on exact_match" in run["error"], run["error"]
    assert "against the champion's exact match" in run["error"]


def test_revoking_the_only_champion_stops_the_alias_with_a_503_naming_it(appliance, people):
    champion = json.loads(appliance.cli("serve", "history", ALIAS).stdout)[0]["model_id"]
    as_key(appliance, people["bob"], "models", "revoke", champion, "--reason", "leaked a secret")
    client = OpenAI(base_url=appliance.gateway_url + "/v1", api_key=people["eve"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model=ALIAS, messages=QA[0][:-1], max_tokens=4)
    assert refused.value.status_code == 503 and "leaked a secret" in str(refused.value)
    again = appliance.cli("models", "deploy", champion, "--alias", ALIAS, check=False)
    assert again.returncode != 0 and "revoked" in again.stderr


def approve_both(appliance, people, request_id: int) -> dict:
    api(appliance, "POST", f"/api/gate/requests/{request_id}/approve", people["bob"], json={})
    done = api(appliance, "POST", f"/api/gate/requests/{request_id}/approve", people["carol"], json={})
    assert done.status_code == 200 and done.json()["state"] == "approved", done.text
    return done.json()


def test_rollback_and_revocation_go_back_to_the_previous_approved_champion(appliance, people):
    appliance.cli("gate", "policy", "set", ALIAS, "--no-better-than-serving", "--margin", "0")
    champions = []
    for seed in (SEEDS["second"], SEEDS["third"]):
        serve = next(s for s in train(appliance, people["trainer"], seed=seed)["stages"] if s["name"] == "serve")
        champions.append(approve_both(appliance, people, serve["outputs"]["request"])["model_id"])
    first, second = champions
    assert json.loads(appliance.cli("serve", "history", ALIAS).stdout)[0]["model_id"] == second
    appliance.cli("serve", "rollback", ALIAS)
    latest = json.loads(appliance.cli("serve", "history", ALIAS).stdout)[0]
    assert (latest["model_id"], latest["event"]) == (first, "rollback")
    revoked = as_key(appliance, people["bob"], "models", "revoke", first, "--reason", "wrong facts")
    assert f"back on {second}" in revoked.stdout
    client = OpenAI(base_url=appliance.gateway_url + "/v1", api_key=people["eve"])
    assert sum(ask(client, ALIAS)) >= len(QA) - 1
    # The same adapter proposed by hand to a second, unprotected alias goes live there at once.
    appliance.cli("gate", "policy", "set", "gated-copy", "--approvals", "0")
    out = appliance.cli("gate", "propose", second, "--alias", "gated-copy").stdout
    assert "staged as gated-copy.candidate-1, approved" in out
    assert sum(ask(client, "gated-copy")) >= len(QA) - 1
    refused = appliance.cli("gate", "propose", first, "--alias", "gated-copy", check=False)
    assert refused.returncode != 0 and "revoked" in refused.stderr


def test_the_gate_counts_requests_approval_times_and_refusals_on_metrics(appliance, people):
    text = api(appliance, "GET", "/metrics", people["admin"]).text
    approved = re.search(r'^airlock_gate_requests\{state="approved"\} (\S+)$', text, re.M)
    assert approved and float(approved.group(1)) >= 3, text[-2000:]
    assert re.search(r"^airlock_gate_seconds_to_approval_count [3-9]", text, re.M)
    refused = re.search(r'^airlock_gate_refusals_total\{reason="better_than_serving"\} (\S+)$', text, re.M)
    assert refused and float(refused.group(1)) >= 1
