"""The web UI's sign-in, session cookie and CSRF rules, over real HTTP against a real gateway
(the browser tests drive the same pages through Chromium)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from gateway_support import Gateway, gateway_settings, run_gateway

from airlock.access.keys import revoke_key
from airlock.meta import open_meta
from airlock.web import install

DATA = Path(__file__).resolve().parents[2] / "examples" / "datasets" / "quickstart.jsonl"


def signed_in(gateway: Gateway, secret: str) -> tuple[httpx.Client, str]:
    """A client holding a session cookie, and the CSRF token its pages carry."""
    client = httpx.Client(base_url=gateway.url, follow_redirects=False)
    answer = client.post("/sign-in", data={"key": secret, "next": "/datasets"})
    assert answer.status_code == 303, answer.text
    page = client.get("/datasets")
    assert page.status_code == 200
    csrf = page.text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    return client, csrf


def test_a_trainer_signs_in_and_gets_an_httponly_strict_cookie_with_an_expiry(ui_gateway):
    answer = httpx.post(f"{ui_gateway.url}/sign-in", data={"key": ui_gateway.new_key("trainer"), "next": "/datasets"})
    assert answer.status_code == 303 and answer.headers["location"] == "/datasets"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("airlock_session=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=28800" in cookie and "Path=/" in cookie
    assert "ak-" not in cookie  # the browser holds a session token, never the key


def test_an_inference_key_and_a_wrong_key_cannot_sign_in(ui_gateway):
    refused = httpx.post(f"{ui_gateway.url}/sign-in", data={"key": ui_gateway.new_key("inference")})
    assert refused.status_code == 403 and "set-cookie" not in refused.headers
    assert "has the role &#39;inference&#39;, which cannot sign in to the web UI" in refused.text
    wrong = httpx.post(f"{ui_gateway.url}/sign-in", data={"key": "ak-nope-secret"})
    assert wrong.status_code == 401 and "it is unknown or its secret is wrong" in wrong.text


def test_pages_need_a_session_and_send_the_browser_to_sign_in(ui_gateway):
    answer = httpx.get(f"{ui_gateway.url}/datasets")
    assert answer.status_code == 303 and answer.headers["location"] == "/sign-in?next=/datasets"
    assert httpx.get(f"{ui_gateway.url}/api/datasets", cookies={"airlock_session": "forged"}).status_code == 401


def test_a_change_with_the_cookie_needs_the_csrf_token_and_this_origin(ui_gateway):
    client, csrf = signed_in(ui_gateway, ui_gateway.new_key("trainer"))
    body, jsonl = DATA.read_bytes(), {"content-type": "application/x-ndjson"}
    no_token = client.post("/api/datasets", params={"name": "qs"}, content=body, headers=jsonl)
    assert no_token.status_code == 403 and "CSRF token" in no_token.json()["error"]["message"]
    wrong = client.post("/api/datasets", params={"name": "qs"}, content=body,
                        headers={**jsonl, "x-csrf-token": csrf[::-1]})
    assert wrong.status_code == 403
    elsewhere = client.post("/api/datasets", params={"name": "qs"}, content=body,
                            headers={**jsonl, "x-csrf-token": csrf, "origin": "http://evil.example"})
    assert elsewhere.status_code == 403 and "another site" in elsewhere.json()["error"]["message"]
    assert client.get("/api/datasets").json() == []  # nothing was stored by the refused changes
    stored = client.post("/api/datasets", params={"name": "qs"}, content=body, headers={**jsonl, "x-csrf-token": csrf})
    assert stored.status_code == 201 and stored.json()["records"] == 8


def test_a_role_is_refused_by_the_server_what_its_pages_do_not_show(ui_gateway):
    client, _ = signed_in(ui_gateway, ui_gateway.new_key("trainer"))
    assert client.get("/api/keys").status_code == 403
    audit = ui_gateway.meta.query("SELECT action FROM audit WHERE action = 'request.refused'")
    deadline = time.monotonic() + 5
    while not audit and time.monotonic() < deadline:  # the recorder writes off the request path
        time.sleep(0.05)
        audit = ui_gateway.meta.query("SELECT action FROM audit WHERE action = 'request.refused'")
    assert audit


def test_sign_out_and_revocation_end_the_session(ui_gateway):
    client, csrf = signed_in(ui_gateway, ui_gateway.new_key("trainer"))
    assert client.post("/sign-out", data={"csrf": csrf}).status_code == 303
    assert client.get("/datasets").status_code == 303  # back to sign-in: the old cookie is dead
    secret = ui_gateway.new_key("trainer")
    client, _ = signed_in(ui_gateway, secret)
    revoke_key(open_meta(ui_gateway.settings.db_path), secret.split("-")[1], actor="os:test")
    deadline = time.monotonic() + 10
    while client.get("/api/datasets").status_code != 401:  # the registry reloads keys on a change
        assert time.monotonic() < deadline, "a revoked key's session still works"
        time.sleep(0.1)


def test_a_session_expires(tmp_path):
    for gateway in run_gateway(gateway_settings(tmp_path / "home", web_session_hours=1 / 3600), ui=install):
        client, _ = signed_in(gateway, gateway.new_key("trainer"))
        time.sleep(1.2)
        assert client.get("/datasets").status_code == 303
        assert client.get("/api/datasets").status_code == 401


def test_every_answer_carries_the_content_security_policy(ui_gateway):
    answer = httpx.get(f"{ui_gateway.url}/sign-in")
    policy = answer.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert answer.headers["x-frame-options"] == "DENY" and answer.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{ui_gateway.url}/static/ui.js").headers["content-security-policy"] == policy


def test_a_dataset_page_shows_its_size_lengths_and_records_as_text(ui_gateway):
    import json

    client, csrf = signed_in(ui_gateway, ui_gateway.new_key("trainer"))
    hostile = [{"messages": [{"role": "user", "content": "<script>alert(1)</script> hi"},
                             {"role": "assistant", "content": '<img src=x onerror="alert(2)"> <b>bold</b>'}]}]
    body = "".join(json.dumps(r) + "\n" for r in hostile).encode() + DATA.read_bytes()
    stored = client.post("/api/datasets", params={"name": "<i>hostile</i>"}, content=body,
                         headers={"content-type": "application/x-ndjson", "x-csrf-token": csrf}).json()
    page = client.get(f"/datasets/{stored['digest']}").text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; hi" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=" in page
    assert "<i>hostile</i>" not in page and "&lt;i&gt;hostile&lt;/i&gt;" in page
    assert "<svg class=\"histogram\"" in page and "Records</dt><dd>9</dd>" in page
    assert "tokens (longest" in page  # counted with the served model's tokenizer
    listing = client.get("/datasets").text
    assert "&lt;i&gt;hostile&lt;/i&gt;" in listing and stored["digest"] in listing


def test_the_playground_calls_v1_with_the_session_and_its_csrf_token(ui_gateway):
    client, csrf = signed_in(ui_gateway, ui_gateway.new_key("trainer"))
    assert client.get("/v1/models").status_code == 200
    chat = {"model": ui_gateway.settings.serve_base_model, "messages": [{"role": "user", "content": "hi"}]}
    refused = client.post("/v1/chat/completions", json=chat)
    assert refused.status_code == 403 and "CSRF token" in refused.json()["error"]["message"]
    elsewhere = client.post("/v1/chat/completions", json=chat, headers={"x-csrf-token": csrf, "origin": "http://x.example"})
    assert elsewhere.status_code == 403
    # Past the checks: this gateway's engine is down, so the engine's absence is the answer.
    assert client.post("/v1/chat/completions", json=chat, headers={"x-csrf-token": csrf}).status_code == 503
