"""The promotion gate's pages against a real gateway over HTTP (the whole path with candidates,
approvals and a browser is tests/e2e/test_web_gate.py): who sees the policies and the requests,
an admin setting a policy with the form, a bad field named and nothing changed, a form without
the page's CSRF token refused."""

from __future__ import annotations

import re

import httpx
from gateway_support import Gateway

from airlock.promotion.policy import policy_for


def _signed_in(gateway: Gateway, role: str) -> httpx.Client:
    secret = gateway.key if role == "admin" else gateway.new_key(role)
    client = httpx.Client(base_url=gateway.url, follow_redirects=False)
    assert client.post("/sign-in", data={"key": secret}).status_code == 303
    return client


def _csrf(html: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


def _nav(html: str) -> list[str]:
    return re.findall(r'href="([^"]+)"', html.split('<nav aria-label="Main">', 1)[1].split("</nav>", 1)[0])


def test_an_admin_sets_an_unprotected_policy_and_a_trainer_reads_it_without_a_form(ui_gateway):
    admin = _signed_in(ui_gateway, "admin")
    page = admin.get("/gate/policies/dev-assistant")
    assert page.status_code == 200 and "No policy" in page.text and "data-policy-form" in page.text
    assert {"/gate/requests", "/gate/policies"} <= set(_nav(page.text))
    saved = admin.post("/gate/policies/dev-assistant", data={
        "csrf": _csrf(page.text), "approvals": "0", "min_exact_match": "0.25", "margin": "0", "metric": "exact_match",
        "eval_set": "", "better_than_base": "on"})
    assert saved.status_code == 303, saved.text
    row = policy_for(ui_gateway.app.state.airlock, "dev-assistant")
    assert row.version == 1 and row.policy.min_exact_match == 0.25 and not row.policy.better_than_serving
    listed = admin.get("/gate/policies").text
    assert "dev-assistant" in listed and "UNPROTECTED" in listed

    trainer = _signed_in(ui_gateway, "trainer")
    shown = trainer.get("/gate/policies/dev-assistant")
    assert shown.status_code == 200 and "UNPROTECTED" in shown.text and "data-policy-form" not in shown.text
    assert {"/gate/requests", "/gate/policies"} <= set(_nav(shown.text))
    refused = trainer.post("/gate/policies/dev-assistant", data={"csrf": _csrf(shown.text), "approvals": "0"})
    assert refused.status_code == 403 and "gate:policy" in refused.text
    assert policy_for(ui_gateway.app.state.airlock, "dev-assistant").version == 1
    assert "No request yet" in trainer.get("/gate/requests").text


def test_a_bad_field_is_named_on_the_form_and_changes_nothing(ui_gateway):
    admin = _signed_in(ui_gateway, "admin")
    csrf = _csrf(admin.get("/gate/policies").text)
    bad = admin.post("/gate/policies/strict-assistant", data={
        "csrf": csrf, "approvals": "two", "min_exact_match": "1.5", "margin": "0", "metric": "exact_match"})
    assert bad.status_code == 400
    assert "approvals: Input should be a valid integer" in bad.text
    assert "min_exact_match: Input should be less than or equal to 1" in bad.text
    assert 'value="two"' in bad.text  # the form keeps what was typed
    unpinned = admin.post("/gate/policies/strict-assistant", data={
        "csrf": csrf, "approvals": "2", "min_exact_match": "0.5", "margin": "0", "metric": "exact_match"})
    assert unpinned.status_code == 400 and "need an eval set of the policy&#39;s own" in unpinned.text
    assert policy_for(ui_gateway.app.state.airlock, "strict-assistant") is None


def test_a_policy_form_without_the_pages_csrf_token_is_refused(ui_gateway):
    admin = _signed_in(ui_gateway, "admin")
    for data in ({"approvals": "0"}, {"approvals": "0", "csrf": "not-the-token"}):
        refused = admin.post("/gate/policies/dev-assistant", data=data)
        assert refused.status_code == 403 and "CSRF" in refused.text
    other_site = admin.post("/gate/policies/dev-assistant", headers={"origin": "http://elsewhere.example"},
                            data={"approvals": "0", "csrf": _csrf(admin.get("/gate/policies").text)})
    assert other_site.status_code == 403 and "another site" in other_site.text
    assert policy_for(ui_gateway.app.state.airlock, "dev-assistant") is None


def test_an_unknown_request_is_not_found_and_an_approver_reads_policies_without_a_form(ui_gateway):
    approver = _signed_in(ui_gateway, "approver")
    assert approver.get("/gate/requests/7").status_code == 404
    assert approver.get("/gate/requests/seven").status_code == 404
    assert "data-policy-form" not in approver.get("/gate/policies/anything").text
