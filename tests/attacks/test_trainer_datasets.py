"""A trainer against another trainer's datasets, through the real gateway (/api and the web UI):
planting data under a name the other uses, reading or listing the other's records, and naming the
other's dataset by digest or by owner. Each test says what a reviewer would see if it worked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_support import Gateway, gateway_settings, run_gateway

from airlock.web import install

JSONL = {"Content-Type": "application/x-ndjson"}
MISSING = "sha256:" + "0" * 64


def records(answer: str) -> bytes:
    """A small chat dataset whose every answer is `answer`: whose data a run reads shows in it."""
    lines = [{"messages": [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": answer}]}
             for i in range(3)]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


FIRST, SECOND = records("The first trainer's answer."), records("PLANTED by the second trainer.")


@pytest.fixture
def gw(tmp_path: Path, tiny_models_dir: Path) -> Iterator[Gateway]:
    yield from run_gateway(gateway_settings(tmp_path / "home"), ui=install)


def call(gw: Gateway, method: str, path: str, key: str, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
    return httpx.request(method, f"{gw.url}{path}", headers=headers, timeout=120, **kw)


def upload(gw: Gateway, key: str, name: str, body: bytes) -> dict:
    answer = call(gw, "POST", "/api/datasets", key, params={"name": name}, content=body, headers=JSONL)
    assert answer.status_code == 201, answer.text
    return answer.json()


def submit(gw: Gateway, key: str, dataset: str, **stage_with) -> httpx.Response:
    stage = {"name": "finetune", "uses": "finetune.lora", "with": {"rank": 4, **stage_with}}
    spec = {"name": "support", "base_model": "airlock-tiny", "dataset": dataset, "stages": [stage]}
    return call(gw, "POST", "/api/runs", key, json={"spec": spec})


def recorded_digest(gw: Gateway, run_id: str) -> str:
    row = gw.meta.one("SELECT spec_json FROM runs WHERE id = ?", (run_id,))
    return json.loads(row["spec_json"])["datasets"]["dataset"]


def holder(secret: str) -> str:
    return f"key-{secret.split('-')[1]}"


def test_a_second_trainers_upload_under_the_same_name_never_feeds_the_first_trainers_run(gw):
    """If it worked: the first trainer's run would record the second trainer's digest, and train on
    'PLANTED by the second trainer.' though the first trainer named only its own 'support-train'."""
    first, second = gw.new_key("trainer"), gw.new_key("trainer")
    mine = upload(gw, first, "support-train", FIRST)
    planted = upload(gw, second, "support-train", SECOND)  # newer, same name
    assert planted["created_at"] >= mine["created_at"] and planted["digest"] != mine["digest"]

    queued = submit(gw, first, "support-train")
    assert queued.status_code == 202, queued.text
    assert recorded_digest(gw, queued.json()["run_id"]) == mine["digest"]
    # Another upload after submission changes nothing for the queued run either.
    again = upload(gw, second, "support-train", records("planted again"))
    assert recorded_digest(gw, queued.json()["run_id"]) == mine["digest"]
    # And the second trainer's own run trains on its own newest upload, not on the first's.
    theirs = submit(gw, second, "support-train")
    assert recorded_digest(gw, theirs.json()["run_id"]) == again["digest"]


def test_a_trainer_cannot_list_or_read_another_trainers_dataset(gw):
    """If it worked: the first trainer's listing or a GET would show the second trainer's dataset,
    or a 404 would differ from a missing one and so tell the digest exists."""
    first, second = gw.new_key("trainer"), gw.new_key("trainer")
    mine = upload(gw, first, "mine", FIRST)
    theirs = upload(gw, second, "theirs", SECOND)
    assert [d["digest"] for d in call(gw, "GET", "/api/datasets", first).json()] == [mine["digest"]]
    for ref in (theirs["digest"], "theirs", f"@{holder(second)}/theirs"):
        answer = call(gw, "GET", f"/api/datasets/{ref}", first)
        assert answer.status_code == 404, (ref, answer.text)
        assert "PLANTED" not in answer.text
    unknown = call(gw, "GET", f"/api/datasets/{MISSING}", first).json()["error"]
    hidden = call(gw, "GET", f"/api/datasets/{theirs['digest']}", first).json()["error"]
    assert hidden == {**unknown, "message": unknown["message"].replace(MISSING, theirs["digest"])}
    assert (call(gw, "GET", f"/api/datasets/@{holder(second)}/theirs", first).json()["error"]["message"]
            == f"no dataset named '@{holder(second)}/theirs'")


def test_a_trainer_cannot_train_on_another_trainers_dataset_by_digest_or_owner(gw):
    """If it worked: a run of the first trainer would be queued on the second trainer's records,
    and the refusal for an existing digest would differ from the one for a missing digest."""
    first, second = gw.new_key("trainer"), gw.new_key("trainer")
    theirs = upload(gw, second, "theirs", SECOND)
    refusals = {}
    for ref in (theirs["digest"], f"@{holder(second)}/theirs", MISSING):
        answer = submit(gw, first, ref)
        assert answer.status_code == 400, answer.text
        refusals[ref] = answer.json()["error"]["message"].replace(ref, "REF")
    assert len(set(refusals.values())) == 1 and "is not a stored dataset" in refusals[MISSING]
    evaluation = submit(gw, first, upload(gw, first, "mine", FIRST)["name"], validation_set=theirs["digest"])
    assert evaluation.status_code == 400 and "is not a stored dataset" in evaluation.text
    assert gw.meta.db["runs"].count == 0


def test_only_an_admin_shares_and_a_share_reaches_that_holder_until_taken_back(gw):
    """If it worked: a trainer could share another's dataset with itself, or a share would leave
    no audit row, or the dataset would stay readable after the admin took the share back."""
    first, second = gw.new_key("trainer"), gw.new_key("trainer")
    theirs = upload(gw, second, "theirs", SECOND)
    body = {"dataset": theirs["digest"], "holders": [holder(first)]}
    assert call(gw, "POST", "/api/datasets/share", first, json=body).status_code == 403
    assert call(gw, "GET", f"/api/datasets/{theirs['digest']}", first).status_code == 404

    shared = call(gw, "POST", "/api/datasets/share", gw.key, json=body)
    assert shared.status_code == 200, shared.text
    assert shared.json()["shared_with"] == [holder(first)]
    named = f"@{holder(second)}/theirs"
    assert call(gw, "GET", f"/api/datasets/{named}", first).json()["digest"] == theirs["digest"]
    assert call(gw, "GET", "/api/datasets/theirs", first).status_code == 404  # plain names stay one's own
    queued = submit(gw, first, named)
    assert queued.status_code == 202 and recorded_digest(gw, queued.json()["run_id"]) == theirs["digest"]
    # A later upload under the shared name is a new dataset, not shared: the name then means it,
    # and the first trainer cannot reach it.
    assert {d["digest"]: d["ref"] for d in call(gw, "GET", "/api/datasets", first).json()} == {theirs["digest"]: named}
    upload(gw, second, "theirs", records("newer, unshared"))
    assert call(gw, "GET", f"/api/datasets/{named}", first).status_code == 404
    # The listing then names the shared dataset by its digest, which still reaches it.
    listed = call(gw, "GET", "/api/datasets", first).json()
    assert [(d["digest"], d["ref"]) for d in listed] == [(theirs["digest"], theirs["digest"])]

    assert call(gw, "POST", "/api/datasets/unshare", gw.key, json=body).json()["shared_with"] == []
    assert call(gw, "GET", f"/api/datasets/{theirs['digest']}", first).status_code == 404
    actions = gw.meta.query("SELECT actor, action, detail_json FROM audit WHERE action LIKE 'dataset.%share' ORDER BY id")
    admin = f"key:{gw.key.split('-')[1]}"
    assert [(a["actor"], a["action"]) for a in actions] == [(admin, "dataset.share"), (admin, "dataset.unshare")]
    assert json.loads(actions[0]["detail_json"])["added"] == [holder(first)]


def test_two_keys_of_one_holder_share_a_namespace_and_approvers_read_all(gw):
    """If it worked the other way: a person's second key would not find the first key's datasets,
    or an approver could not read what it is asked to approve."""
    laptop, server = gw.new_key("trainer", holder="alice"), gw.new_key("trainer", holder="alice")
    other = gw.new_key("trainer")
    mine = upload(gw, laptop, "notes", FIRST)
    theirs = upload(gw, other, "notes", SECOND)
    assert call(gw, "GET", "/api/datasets/notes", server).json()["digest"] == mine["digest"]
    assert mine["owner"] == "alice"
    approver = gw.new_key("approver")
    assert {d["digest"] for d in call(gw, "GET", "/api/datasets", approver).json()} == {mine["digest"], theirs["digest"]}
    assert call(gw, "GET", f"/api/datasets/@{holder(other)}/notes", approver).json()["digest"] == theirs["digest"]


def signed_in(gw: Gateway, secret: str) -> httpx.Client:
    client = httpx.Client(base_url=gw.url, follow_redirects=False)
    assert client.post("/sign-in", data={"key": secret, "next": "/datasets"}).status_code == 303
    return client


def test_a_trainers_datasets_pages_do_not_show_another_trainers_records(gw):
    """If it worked: the first trainer's datasets page, new-run form or dataset page would show the
    second trainer's dataset, its digest or its records."""
    first, second = gw.new_key("trainer"), gw.new_key("trainer")
    upload(gw, first, "mine-only", FIRST)
    theirs = upload(gw, second, "their-secret-set", SECOND)
    client = signed_in(gw, first)
    for path in ("/datasets", "/runs/new"):
        page = client.get(path)
        assert page.status_code == 200 and "mine-only" in page.text
        assert "their-secret-set" not in page.text and theirs["digest"] not in page.text
    page = client.get(f"/datasets/{theirs['digest']}")
    assert page.status_code == 404 and "PLANTED" not in page.text
    assert "PLANTED" in signed_in(gw, second).get(f"/datasets/{theirs['digest']}").text


def test_the_datasets_page_in_a_browser_lists_only_the_trainers_own(gw, browser):
    """If it worked: the table a trainer sees in Chromium would hold the other trainer's row."""
    first, second = gw.new_key("trainer"), gw.new_key("trainer")
    upload(gw, first, "mine-only", FIRST)
    upload(gw, second, "their-secret-set", SECOND)
    page = browser.new_page()
    try:
        page.goto(f"{gw.url}/sign-in?next=/datasets")
        page.fill("input[name=key]", first)
        page.click("button[type=submit]")
        page.wait_for_url(f"{gw.url}/datasets")
        rows = page.locator("section[aria-labelledby=stored-title] tbody tr").all_inner_texts()
    finally:
        page.close()
    assert len(rows) == 1 and "mine-only" in rows[0] and holder(first) in rows[0]
