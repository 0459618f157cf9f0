"""The promotion gate in a real browser (Debian's chromium) on the shared real appliance: an admin
sets an alias's policy with the form; a trainer's run (queued over /api, as tests/e2e/test_gate.py
does) is staged; the trainer sees its request with the totals only, asks its staging name in the
playground, and is refused when it tries to approve; the author's own approver key is shown no
buttons and refused too; two approvers (two people) approve from the request's page; the alias
switches and the serving page names both; a revocation from the model page stops the alias with a
503 naming it. Tests run in file order and share one protected alias of their own."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
from browser_harness import assert_same_origin, look, open_page
from e2e_support import QA, REPO_ROOT, run_toward_alias
from openai import OpenAI
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
ALIAS = "web-gated"
DATASETS = REPO_ROOT / "examples" / "datasets"
JSONL = {"content-type": "application/x-ndjson"}
STATE: dict = {}  # what one test hands the next: the request, its staging name, the candidate


def key(appliance, name: str, role: str, holder: str) -> str:
    out = appliance.cli("apikey", "create", "--name", name, "--role", role, "--holder", holder).stdout
    return re.search(r"ak-[A-Za-z0-9_-]+", out).group(0)


def api(appliance, method: str, path: str, secret: str, **kw) -> httpx.Response:
    return httpx.request(method, appliance.gateway_url + path, headers={"Authorization": f"Bearer {secret}",
                                                                        **kw.pop("headers", {})}, timeout=600, **kw)


def records_as(name: str, separators: tuple[str, str]) -> bytes:
    """An example file's records in bytes of their own: the store keeps a dataset by its digest, and
    other tests of this appliance upload the examples' own files."""
    records = [json.loads(line) for line in (DATASETS / name).read_text().splitlines() if line.strip()]
    return "".join(json.dumps(r, separators=separators) + "\n" for r in records).encode()


@pytest.fixture(scope="module")
def people(appliance) -> dict[str, str]:
    found = {"admin": key(appliance, "web-gate-admin", "admin", "wanda"),
             "trainer": key(appliance, "web-gate-trainer", "trainer", "tess"),
             "author_approver": key(appliance, "web-gate-tess-approver", "approver", "tess"),
             "uma": key(appliance, "web-gate-uma", "approver", "uma"),
             "vic": key(appliance, "web-gate-vic", "approver", "vic"),
             "app": key(appliance, "web-gate-app", "inference", "ivy")}
    facts = api(appliance, "POST", "/api/datasets", found["trainer"], params={"name": "facts"},
                content=records_as("quickstart.jsonl", (",", ": ")), headers=JSONL)
    assert facts.status_code == 201, facts.text
    # The policy's eval set is the admin's own, shared with no one (the policy refuses another).
    held_out = api(appliance, "POST", "/api/datasets", found["admin"], params={"name": "web-gate-eval"},
                   content=records_as("quickstart-eval.jsonl", (", ", ":")), headers=JSONL)
    assert held_out.status_code == 201, held_out.text
    return found


def sign_in(page: Page, secret: str) -> None:
    page.goto("/sign-in")
    page.fill("#key", secret)
    page.click("main button[type=submit]")
    expect(page).to_have_url(re.compile(r"/runs$"))



def train(appliance, trainer: str) -> dict:
    """The trainer's run toward the protected alias, with a seed of its own (it revokes what it trains)."""
    return run_toward_alias(appliance.gateway_url, trainer, name="web-gated", alias=ALIAS, seed=70)


def post_form(page: Page, path: str, **fields: str):
    """A form posted with the page's session and CSRF token, as its button would post it: what the
    server does with a post the page offers no button for."""
    csrf = page.get_attribute('meta[name="csrf-token"]', "content")
    return page.request.post(path, form={"csrf": csrf, **fields})


def test_an_admin_sets_the_aliases_policy_in_the_form(appliance, browser, people):
    with open_page(browser, appliance.gateway_url, "/") as recorded:
        page = recorded.page
        sign_in(page, people["admin"])
        page.click("header nav a[href='/gate/policies']")
        page.fill("#new-alias", ALIAS)
        page.click("form[data-new-policy] button[type=submit]")
        expect(page).to_have_url(re.compile(f"/gate/policies/{ALIAS}$"))
        expect(page.locator("[data-no-policy]")).to_be_visible()
        page.fill("#g-eval", "web-gate-eval")
        page.fill("#g-min", "0.5")
        page.fill("#g-approvals", "2")
        page.check("#g-better_than_serving")
        look(page, "gate-policy-form")
        page.click("form[data-policy-form] button[type=submit]")
        expect(page.locator("#current-title")).to_have_text("Version 1")
        expect(page.locator("[data-approvals]")).to_have_text("2 by distinct people")
        expect(page.locator("[data-current-policy]")).to_contain_text("@wanda/web-gate-eval")
        expect(page.locator("[data-current-policy]")).to_contain_text("wanda")  # who set it
        page.goto("/gate/policies")
        row = page.locator(f"tr[data-policy='{ALIAS}']")
        expect(row).to_contain_text("2")
        expect(page.locator("tr[data-policy='quickstart-assistant']")).to_contain_text("UNPROTECTED")
        look(page, "gate-policies")
    assert_same_origin(recorded.requests, appliance.gateway_url)
    assert recorded.page_errors == []
    shown = api(appliance, "GET", f"/api/gate/policies/{ALIAS}", people["trainer"]).json()
    assert shown["approvals"] == 2 and shown["min_exact_match"] == 0.5 and shown["set_by"].startswith("key:")


def test_the_trainer_sees_totals_asks_its_candidate_and_cannot_approve_it(appliance, browser, people):
    run = train(appliance, people["trainer"])
    assert run["status"] == "succeeded", run["error"]
    serve = next(s for s in run["stages"] if s["name"] == "serve")["outputs"]
    assert serve["state"] == "pending" and serve["staging_name"] == f"{ALIAS}.candidate-1"
    STATE.update(request=serve["request"], staging=serve["staging_name"], model=serve["model_id"], run=run["id"])
    question, answer = QA[0][:-1], QA[0][-1]["content"]
    with open_page(browser, appliance.gateway_url, "/") as recorded:
        page = recorded.page
        sign_in(page, people["trainer"])
        page.click("header nav a[href='/gate/requests']")
        page.click(f"tr[data-request-row='{STATE['request']}'] a")
        expect(page.locator("[data-request-state]")).to_have_text("pending")
        expect(page.locator("[data-scores] thead")).to_contain_text("candidate")
        expect(page.locator("[data-scores] tbody tr")).to_have_count(3)  # exact match, contains, answer loss
        expect(page.locator("[data-totals-only]")).to_be_visible()
        assert page.locator("[data-examples]").count() == 0  # never the policy's eval set to its author
        assert page.locator("form[data-approve], form[data-reject]").count() == 0
        expect(page.locator("[data-no-decision]")).to_contain_text("models:approve")
        look(page, "gate-request-author")

        page.click(f"a[href='/playground?alias={STATE['staging']}']")
        expect(page.locator(f"#p-alias option[value='{STATE['staging']}']")).to_have_text(
            f"{STATE['staging']} (candidate for {ALIAS})")
        expect(page.locator("#p-alias")).to_have_value(STATE["staging"])
        page.fill("#p-prompt", question[-1]["content"])
        if question[0]["role"] == "system":
            page.fill("#p-system", question[0]["content"])
        page.click("form[data-playground] button[type=submit]")
        expect(page.locator('[data-answer="tuned"]')).to_have_text(answer, timeout=60_000)
        look(page, "gate-playground-candidate")

        page.goto(f"/gate/requests/{STATE['request']}")
        refused = post_form(page, f"/gate/requests/{STATE['request']}/approve", comment="mine is good")
        assert refused.status == 403
        assert "may not approve or reject promotions" in refused.text()
    assert_same_origin(recorded.requests, appliance.gateway_url)
    assert recorded.page_errors == []
    mine = api(appliance, "GET", f"/api/gate/requests/{STATE['request']}", people["trainer"]).json()
    assert mine["approvals"] == [] and mine["state"] == "pending"


def test_the_authors_own_approver_key_is_shown_no_buttons_and_refused(appliance, browser, people):
    with open_page(browser, appliance.gateway_url, "/") as recorded:
        page = recorded.page
        sign_in(page, people["author_approver"])
        page.goto(f"/gate/requests/{STATE['request']}")
        expect(page.locator("[data-examples] tbody tr")).to_have_count(len(QA))  # a reviewer's view
        assert page.locator("form[data-approve], form[data-reject]").count() == 0
        expect(page.locator("[data-no-decision]")).to_contain_text("you are the author")
        refused = post_form(page, f"/gate/requests/{STATE['request']}/approve")
        assert refused.status == 403
        assert f"tess is the author of request {STATE['request']}" in refused.text()
        rejected = post_form(page, f"/gate/requests/{STATE['request']}/reject", reason="spite")
        assert rejected.status == 403 and "tess is the author" in rejected.text()
    assert recorded.page_errors == []
    assert api(appliance, "GET", f"/api/gate/requests/{STATE['request']}", people["uma"]).json()["approvals"] == []


def approve_in_page(browser, appliance, secret: str, comment: str) -> Page:
    recorded = open_page(browser, appliance.gateway_url, "/")
    page = recorded.page
    sign_in(page, secret)
    page.goto(f"/gate/requests/{STATE['request']}")
    page.fill("#d-comment", comment)
    # The post returns once the approval is recorded and, for the last one, the alias has switched.
    page.click("form[data-approve] button[type=submit]", no_wait_after=True)
    return recorded


def test_two_approvers_approve_in_the_page_and_the_alias_switches(appliance, browser, people):
    first = approve_in_page(browser, appliance, people["uma"], "answers checked")
    with first:
        page = first.page
        expect(page.locator("[data-approvals] tbody tr")).to_have_count(1, timeout=60_000)
        expect(page.locator("[data-request-state]")).to_have_text("pending")
        expect(page.locator("[data-approvals] tbody tr")).to_have_count(1)
        expect(page.locator("[data-approvals]")).to_contain_text("answers checked")
        expect(page.locator("[data-approvals]")).to_contain_text("not signed")
        expect(page.locator("[data-no-decision]")).to_contain_text("decided on this request already")
        expect(page.locator("[data-examples] tbody tr")).to_have_count(len(QA))
        # The rows marked are those where the candidate answers otherwise than the model it must beat.
        view = api(appliance, "GET", f"/api/gate/requests/{STATE['request']}", people["uma"]).json()
        differing = sum(e["differs"] for e in view["examples"])
        assert differing > 0  # the base model never answers the facts the candidate learned
        expect(page.locator("[data-examples] tbody tr[data-differs]")).to_have_count(differing)
        expect(page.locator("[data-dataset]")).to_have_text("facts by tess")
        expect(page.locator(f"a[href='/runs/{STATE['run']}']")).to_be_visible()
        look(page, "gate-request-reviewer")
        assert first.page_errors == []

    second = approve_in_page(browser, appliance, people["vic"], "ok")
    with second:
        page = second.page
        # The last approval loads, verifies and smoke-tests the adapter before the alias moves.
        expect(page.locator("[data-request-state]")).to_have_text("approved", timeout=120_000)
        expect(page.locator("[data-approvals] tbody tr")).to_have_count(2)
        assert second.page_errors == []

    with open_page(browser, appliance.gateway_url, "/") as recorded:
        page = recorded.page
        sign_in(page, people["admin"])
        page.goto("/serving")
        section = page.locator("section", has=page.locator("h2", has_text=re.compile(f"^{ALIAS}$")))
        expect(section.locator("p code").first).to_have_text(STATE["model"])
        latest = section.locator("tr[data-history-row]").first
        expect(latest.locator("[data-approved-by]")).to_have_text("uma, vic")
        expect(latest).to_contain_text("promoted")
        look(page, "gate-serving")
    app = OpenAI(base_url=appliance.gateway_url + "/v1", api_key=people["app"], max_retries=0)
    reply = app.chat.completions.create(model=ALIAS, messages=QA[0][:-1], temperature=0, max_tokens=48)
    assert reply.choices[0].message.content.strip() == QA[0][-1]["content"]


def test_a_revocation_from_the_model_page_stops_the_alias_with_a_503_naming_it(appliance, browser, people):
    with open_page(browser, appliance.gateway_url, "/") as recorded:
        page = recorded.page
        sign_in(page, people["vic"])
        page.goto(f"/models/{STATE['model']}")
        page.click("details summary")
        page.fill("#r-reason", "answers a question it was never asked")
        page.click("form[data-revoke] button[type=submit]", no_wait_after=True)
        expect(page.locator("[data-revoked]")).to_contain_text("answers a question it was never asked",
                                                               timeout=60_000)
        assert page.locator("form[data-revoke]").count() == 0
        look(page, "gate-model-revoked")
    assert_same_origin(recorded.requests, appliance.gateway_url)
    assert recorded.page_errors == []

    with open_page(browser, appliance.gateway_url, "/") as recorded:
        page = recorded.page
        sign_in(page, people["trainer"])
        page.goto(f"/playground?alias={ALIAS}")
        page.fill("#p-prompt", QA[0][-2]["content"])
        page.click("form[data-playground] button[type=submit]")
        expect(page.locator('[data-answer="tuned"]')).to_contain_text("answers a question it was never asked")
        expect(page.locator('[data-answer="tuned"]')).to_contain_text("revoked")
        # The staging name left with the revocation.
        assert page.locator(f"#p-alias option[value='{STATE['staging']}']").count() == 0
    assert_same_origin(recorded.requests, appliance.gateway_url)
    assert recorded.page_errors == []
    app = OpenAI(base_url=appliance.gateway_url + "/v1", api_key=people["app"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        app.chat.completions.create(model=ALIAS, messages=QA[0][:-1], max_tokens=4)
    assert refused.value.status_code == 503 and "answers a question it was never asked" in str(refused.value)
