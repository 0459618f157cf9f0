"""The admin's pages, /keys and /audit, against a real gateway: over HTTP for who may see them and
what they list, and in Chromium for the journey (create a key and see its secret once, revoke it,
find both in the audit log, and see a tampered log named as broken)."""

from __future__ import annotations

import re
import sqlite3
import time

import httpx
import pytest
from browser_harness import assert_no_errors, assert_same_origin, check_accessibility, open_page, screenshot
from gateway_support import Gateway

from airlock.access.keys import create_key, revoke_key
from airlock.access.roles import ROLES
from airlock.meta import open_meta
from airlock.meta.audit import list_rows
from airlock.web.admin import AUDIT_PAGE_SIZE, ROLE_DESCRIPTIONS


def _client(gateway: Gateway, role: str) -> tuple[httpx.Client, str]:
    """A client signed in with a new key of `role` (the gateway's own key for admin), and its id."""
    secret = gateway.key if role == "admin" else gateway.new_key(role)
    client = httpx.Client(base_url=gateway.url, follow_redirects=False)
    assert client.post("/sign-in", data={"key": secret}).status_code == 303
    return client, secret.split("-")[1]


def _eventually(read, timeout_s: float = 10):
    """`read()` once it is truthy: the recorder and the key registry catch up off the request path."""
    deadline = time.monotonic() + timeout_s
    while not (found := read()):
        assert time.monotonic() < deadline, "not seen in time"
        time.sleep(0.05)
    return found


def _nav_links(html: str) -> list[str]:
    nav = html.split('<nav aria-label="Main">', 1)[1].split("</nav>", 1)[0]
    return re.findall(r'href="([^"]+)"', nav)


@pytest.mark.parametrize("role", ["trainer", "approver"])
def test_other_roles_are_refused_the_admin_pages_and_see_no_link_to_them(ui_gateway, role):
    client, key_id = _client(ui_gateway, role)
    for path, permission in (("/keys", "keys:admin"), ("/audit", "audit:read")):
        refused = client.get(path)
        assert refused.status_code == 403 and "Not for this role" in refused.text
        assert f"lacks the permission &#39;{permission}&#39;" in refused.text
        assert not {"/keys", "/audit"} & set(_nav_links(refused.text))
    assert not {"/keys", "/audit"} & set(_nav_links(client.get("/runs").text))

    def refusals():
        rows = list_rows(ui_gateway.meta, action="request.refused", subject=key_id)
        return rows if len(rows) >= 2 else None

    rows = _eventually(refusals)
    assert {(r["actor"], r["detail"]["path"], r["detail"]["permission"]) for r in rows} == {
        (f"key:{key_id}", "/keys", "keys:admin"), (f"key:{key_id}", "/audit", "audit:read")}


def test_an_admin_sees_both_pages_and_their_links(ui_gateway):
    client, _ = _client(ui_gateway, "admin")
    assert _nav_links(client.get("/runs").text)[-2:] == ["/keys", "/audit"]
    assert client.get("/keys").status_code == 200 and client.get("/audit").status_code == 200
    assert httpx.get(f"{ui_gateway.url}/keys").headers["location"] == "/sign-in?next=/keys"


def test_every_role_has_a_description_on_the_form():
    assert set(ROLE_DESCRIPTIONS) == set(ROLES)


def test_the_keys_page_lists_keys_as_text_and_offers_revoke_only_for_live_ones(ui_gateway):
    client, _ = _client(ui_gateway, "admin")
    meta = open_meta(ui_gateway.settings.db_path)
    create_key(meta, "scoped", models=["support-bot"], expires="30d", rpm=600, max_tokens=300)
    revoked, _ = create_key(meta, "gone", role="trainer")
    revoke_key(meta, revoked)
    create_key(meta, "<b>hostile</b>")
    expired, _ = create_key(meta, "old", expires="1h")
    with sqlite3.connect(ui_gateway.settings.db_path) as conn:
        conn.execute("UPDATE api_keys SET expires_at = '2020-01-01T00:00:00+00:00' WHERE id = ?", (expired,))
    page = client.get("/keys").text
    assert "<b>hostile</b>" not in page and "&lt;b&gt;hostile&lt;/b&gt;" in page
    assert "support-bot" in page and "600 requests and" in page and "every model" in page
    assert "300 output tokens by default" in " ".join(page.split())
    assert page.count('data-api="DELETE /api/keys/') == 3  # the admin's, the scoped and the hostile key
    for gone in (revoked, expired):
        assert f'data-api="DELETE /api/keys/{gone}"' not in page
    assert ">revoked" in page and ">expired<" in page


def test_the_audit_page_pages_newest_first_and_keeps_the_filters(ui_gateway):
    meta = open_meta(ui_gateway.settings.db_path)
    for n in range(AUDIT_PAGE_SIZE + 5):
        meta.audit("os:alice", "dataset.add", f"d{n}", n=n)
    meta.audit("os:bob", "alias.switched", "support-bot")
    client, _ = _client(ui_gateway, "admin")
    first = client.get("/audit", params={"actor": "os:alice"}).text
    ids = [int(i) for i in re.findall(r'data-audit-row="(\d+)"', first)]
    assert len(ids) == AUDIT_PAGE_SIZE and ids == sorted(ids, reverse=True)
    older = re.search(r'href="(/audit\?[^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    assert "actor=os%3Aalice" in older and f"before={ids[-1]}" in older
    second = client.get(older).text
    rest = [int(i) for i in re.findall(r'data-audit-row="(\d+)"', second)]
    assert len(rest) == 5 and max(rest) < ids[-1] and 'rel="next"' not in second
    assert "Back to the newest rows" in second
    by_subject = client.get("/audit", params={"subject": "support-bot"}).text
    assert re.findall(r"<td data-action>([^<]+)</td>", by_subject) == ["alias.switched"]
    bad = client.get("/audit", params={"since": "last tuesday"})
    assert bad.status_code == 400 and "is not an ISO date or date/time" in bad.text
    assert 'value="last tuesday"' in bad.text  # the filter stays in the form, to correct it


def test_a_row_edited_into_something_not_json_is_still_listed_and_named(ui_gateway):
    client, _ = _client(ui_gateway, "admin")
    with sqlite3.connect(ui_gateway.settings.db_path) as conn:
        conn.execute("UPDATE audit SET detail_json = '<not json>' WHERE id = 1")
    page = client.get("/audit")
    assert page.status_code == 200 and 'data-chain="broken"' in page.text
    assert "row 1 was edited" in page.text and "&lt;not json&gt;" in page.text


def _sign_in(recorded, secret: str, then: str) -> None:
    page = recorded.page
    page.fill("#key", secret)
    page.click("main button[type=submit]")
    page.wait_for_url(f"**{then}")


def test_an_admin_creates_a_key_sees_its_secret_once_revokes_it_and_audits_it(browser, ui_gateway):
    url = ui_gateway.url
    with open_page(browser, url, "/keys") as recorded:
        page = recorded.page
        recorded.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
        _sign_in(recorded, ui_gateway.key, "/keys")
        page.fill("#k-name", "ml-team")
        page.check("#k-role-trainer")
        page.fill("#k-rpm", "600")
        page.fill("#k-max-tokens", "256")
        page.click("#create-key button[type=submit]")
        page.wait_for_selector("[data-secret]:not([hidden])")
        secret, key_id = page.text_content("[data-secret-value]"), page.text_content("[data-secret-id]")
        assert secret.startswith(f"ak-{key_id}-") and "never again" in page.text_content("[data-secret]")
        assert httpx.get(f"{url}/api/datasets", headers={"authorization": f"Bearer {secret}"}).status_code == 200
        page.click("[data-copy]")
        page.wait_for_selector("[data-copy-status].ok")
        assert page.evaluate("navigator.clipboard.readText()") == secret
        check_accessibility(page, "keys, with a new secret")
        screenshot(page, "keys-secret")

        page.reload()
        assert secret not in page.content()
        row = f'tr[data-key-row="{key_id}"]'
        assert page.text_content(f"{row} [data-key-state]").strip() == "live"
        assert "256 output tokens by default" in " ".join(page.text_content(row).split())
        asked: list[str] = []
        page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
        with page.expect_navigation():
            page.click(f'button[aria-label="Revoke key {key_id}"]')
        assert key_id in asked[0] and "ml-team" in asked[0]
        assert page.text_content(f"{row} [data-key-state]").strip().startswith("revoked")
        _eventually(lambda: httpx.get(f"{url}/api/datasets",
                                      headers={"authorization": f"Bearer {secret}"}).status_code == 401)
        check_accessibility(page, "keys")
        screenshot(page, "keys")

        page.goto("/audit")
        assert page.get_attribute("[data-chain]", "data-chain") == "intact"
        assert "Hash chain intact" in page.text_content(".chain")
        mine = page.locator("tr[data-audit-row]", has_text=key_id)
        # (The revoked key's refused call above is summarised too, as auth.failed, within a second.)
        actions = mine.locator("[data-action]").all_text_contents()
        assert sorted(a for a in actions if a != "auth.failed") == ["apikey.create", "apikey.revoke"]
        check_accessibility(page, "audit")
        screenshot(page, "audit")

        page.fill("#a-action", "apikey.revoke")
        with page.expect_navigation():
            page.click("form.filters button[type=submit]")
        assert "action=apikey.revoke" in page.url
        assert set(page.locator("[data-action]").all_text_contents()) == {"apikey.revoke"}
        screenshot(page, "audit-filtered")

        created = ui_gateway.meta.one("SELECT id FROM audit WHERE action = 'apikey.create' AND subject = ?",
                                      (key_id,))["id"]
        with sqlite3.connect(ui_gateway.settings.db_path) as conn:  # as an intruder with the file would
            conn.execute("UPDATE audit SET detail_json = ? WHERE id = ?", ('{"role": "inference"}', created))
        page.goto("/audit")
        assert page.get_attribute("[data-chain]", "data-chain") == "broken"
        assert f"row {created} was edited" in page.text_content("[data-first-problem]")
        assert "tampered" in page.get_attribute(f'tr[data-audit-row="{created}"]', "class")
        check_accessibility(page, "audit, broken")
        screenshot(page, "audit-broken")

        assert_same_origin(recorded.requests, url)
        assert_no_errors(recorded)


def test_the_key_form_shows_every_problem_the_server_finds(browser, ui_gateway):
    with open_page(browser, ui_gateway.url, "/keys") as recorded:
        page = recorded.page
        _sign_in(recorded, ui_gateway.key, "/keys")
        page.fill("#k-models", "support-bot, bad name!")
        page.fill("#k-expires", "2000-01-01")
        page.fill("#k-rpm", "-5")
        page.click("#create-key button[type=submit]")
        page.wait_for_selector("#create-key [data-status].error")
        assert "4 problems" in page.text_content("#create-key [data-status]")
        problems = page.locator("#create-key [data-problems] li").all_text_contents()
        assert len(problems) == 4
        assert any("needs a name" in p for p in problems) and any("'bad name!'" in p for p in problems)
        assert any("lies in the past" in p for p in problems) and any("--rpm -5" in p for p in problems)
        assert page.is_hidden("[data-secret]")
        check_accessibility(page, "keys, refused")
        screenshot(page, "keys-refused")
        assert_same_origin(recorded.requests, ui_gateway.url)
        # The browser reports the refused request itself; nothing else may complain.
        assert all("status of 400" in e for e in recorded.console_errors), recorded.console_errors
        assert not recorded.page_errors
    assert [k["name"] for k in httpx.get(f"{ui_gateway.url}/api/keys",
                                         headers={"authorization": f"Bearer {ui_gateway.key}"}).json()] == ["tests"]


def test_the_newest_rows_deleted_are_named_from_the_signed_anchors(ui_gateway):
    """Deleting the newest row and resetting the sequence leaves a chain intact on its own."""
    client, _ = _client(ui_gateway, "admin")
    made = httpx.post(f"{ui_gateway.url}/api/keys", json={"name": "anchored", "role": "trainer"},
                      headers={"Authorization": f"Bearer {ui_gateway.key}"})  # a row the gateway writes and anchors
    assert made.status_code in (200, 201), made.text
    with sqlite3.connect(ui_gateway.settings.db_path) as conn:
        last = conn.execute("SELECT MAX(id) FROM audit").fetchone()[0]
        conn.execute("DELETE FROM audit WHERE id = ?", (last,))
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'audit'", (last - 1,))
    page = client.get("/audit")
    assert page.status_code == 200 and 'data-chain="broken"' in page.text
    assert f"the newest row {last} was deleted" in page.text
