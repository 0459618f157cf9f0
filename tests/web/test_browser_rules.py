"""The UI's rules as a browser meets them, against a real gateway: an inference key is turned away
at sign-in, a trainer is shown no admin page and refused one anyway, a change without the page's
CSRF token is refused, the new fine-tune form names a bad field before anything is queued, and a
file dropped on the upload area is uploaded."""

from __future__ import annotations

import re

from browser_harness import assert_same_origin, check_accessibility, open_page, screenshot
from playwright.sync_api import Page, expect

from airlock.config import REPO_ROOT

FACTS = REPO_ROOT / "examples" / "datasets" / "quickstart.jsonl"


def sign_in(page: Page, secret: str) -> None:
    page.goto("/sign-in")
    page.fill("#key", secret)
    page.click("main button[type=submit]")


def test_an_inference_key_is_turned_away_at_sign_in(ui_gateway, browser):
    with open_page(browser, ui_gateway.url, "/sign-in") as recorded:
        page = recorded.page
        sign_in(page, ui_gateway.new_key("inference"))
        expect(page.locator("[role=alert]")).to_contain_text("which cannot sign in to the web UI")
        assert page.context.cookies() == []
        screenshot(page, "sign-in-refused")
    assert_same_origin(recorded.requests, ui_gateway.url)


def test_a_trainer_sees_no_admin_page_and_is_refused_one_and_a_change_needs_the_csrf_token(ui_gateway, browser):
    with open_page(browser, ui_gateway.url, "/sign-in") as recorded:
        page = recorded.page
        sign_in(page, ui_gateway.new_key("trainer"))
        expect(page).to_have_url(re.compile(r"/runs$"))
        nav = page.locator("header nav")
        for hidden in ("Keys", "Audit", "Serving"):
            expect(nav).not_to_contain_text(hidden)
        assert page.goto("/keys").status == 403
        expect(page.locator("h1")).to_have_text("Not for this role")
        page.goto("/datasets")
        statuses = page.evaluate("""async () => {
            const send = (headers) => fetch("/api/datasets?name=x", {method: "POST", body: "{}",
                headers: {"Content-Type": "application/x-ndjson", ...headers}}).then((r) => r.status);
            const token = document.querySelector('meta[name="csrf-token"]').content;
            return [await send({}), await send({"X-CSRF-Token": "forged"}), await send({"X-CSRF-Token": token})];
        }""")
        assert statuses == [403, 403, 400]  # the last is past the checks: "{}" is no chat record


def test_the_form_names_a_bad_field_before_anything_is_queued(ui_gateway, browser):
    with open_page(browser, ui_gateway.url, "/sign-in") as recorded:
        page = recorded.page
        sign_in(page, ui_gateway.new_key("trainer"))
        page.goto("/datasets")
        page.set_input_files("#file", str(FACTS))
        page.click("#upload button[type=submit]")
        expect(page).to_have_url(re.compile(r"/datasets/sha256:"))
        page.goto("/runs/new")
        page.select_option("#f-dataset", "quickstart")
        page.fill("#f-epochs", "0")
        page.fill("#f-alias", "needs-a-gate")
        page.click("#new-run button[type=submit]")
        expect(page.locator("[data-error-for=epochs]")).not_to_be_empty()
        expect(page.locator("#f-epochs")).to_have_attribute("aria-invalid", "true")
        expect(page.locator("[data-problems]")).to_contain_text("alias: serving needs an evaluation set")
        expect(page.locator("[data-status]")).to_have_text("Not queued: fix the fields marked above.")
        check_accessibility(page, "new-fine-tune-problems")
        screenshot(page, "new-fine-tune-problems")
        assert page.request.get(f"{ui_gateway.url}/api/runs").json() == []


def test_a_file_dropped_on_the_upload_area_is_uploaded(ui_gateway, browser):
    with open_page(browser, ui_gateway.url, "/sign-in") as recorded:
        page = recorded.page
        sign_in(page, ui_gateway.new_key("trainer"))
        page.goto("/datasets")
        dropped = page.evaluate_handle("""(text) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([text], "dropped-facts.jsonl", {type: "application/jsonl"}));
            return transfer;
        }""", FACTS.read_text())
        page.dispatch_event("[data-drop]", "drop", {"dataTransfer": dropped})
        expect(page.locator("#name")).to_have_value("dropped-facts")
        page.click("#upload button[type=submit]")
        expect(page).to_have_url(re.compile(r"/datasets/sha256:"))
        expect(page.locator("h1")).to_contain_text("dropped-facts")
    assert_same_origin(recorded.requests, ui_gateway.url)
