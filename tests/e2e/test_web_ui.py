"""The web UI in a real browser (Debian's chromium) against a real appliance (`airlock up`: the
engine on vLLM, the worker, the gateway): the whole journey from a JSONL file to a chat with the
fine-tuned model, cancelling a run and the queue behind a higher priority, and a dataset that
holds markup. Every page is checked for requests leaving the origin, critical accessibility
violations and console errors, and photographed for review."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
from browser_harness import assert_same_origin, look, open_page
from e2e_support import QA, REPO_ROOT
from openai import OpenAI
from playwright.sync_api import Page, expect
from waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
DATASETS = REPO_ROOT / "examples" / "datasets"
ALIAS = "web-assistant"
RUN_TIMEOUT_MS = 420_000


@pytest.fixture(scope="module", autouse=True)
def unprotected_aliases(appliance) -> None:
    """This module's aliases serve what passes the workflow's own gate, approved by no one: the
    gate's approvals are tests/e2e/test_web_gate.py's."""
    for alias in (ALIAS, "web-switch"):
        appliance.cli("gate", "policy", "set", alias, "--approvals", "0")


@pytest.fixture(scope="module")
def trainer(appliance) -> str:
    out = appliance.cli("apikey", "create", "--name", "web-trainer", "--role", "trainer").stdout
    return re.search(r"ak-[A-Za-z0-9_-]+", out).group(0)


def sign_in(page: Page, secret: str) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/sign-in"))
    page.fill("#key", secret)
    page.click("main button[type=submit]")
    expect(page).to_have_url(re.compile(r"/runs$"))



def upload(page: Page, path: Path, name: str) -> None:
    page.goto("/datasets")
    page.set_input_files("#file", str(path))
    page.fill("#name", name)
    page.click("#upload button[type=submit]")


def facts_text() -> str:
    """The quickstart's records in other bytes: the store keeps a dataset by its digest, so the
    quickstart's own file, which other tests of this appliance add, would keep its first name."""
    records = [json.loads(line) for line in (DATASETS / "quickstart.jsonl").read_text().splitlines() if line.strip()]
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)


def with_facts(page: Page, tmp_path: Path) -> None:
    """The quickstart's records stored as `facts`, whichever test runs first."""
    if page.goto("/datasets/facts").status == 404:
        facts = tmp_path / "facts.jsonl"
        facts.write_text(facts_text())
        upload(page, facts, "facts")
        expect(page).to_have_url(re.compile(r"/datasets/sha256:"))


def queue(page: Page, appliance, spec: dict) -> str:
    """A run queued through /api with the page's session and CSRF token, as the page's script does."""
    page.goto("/runs")
    csrf = page.get_attribute('meta[name="csrf-token"]', "content")
    answer = page.request.post(f"{appliance.gateway_url}/api/runs", headers={"x-csrf-token": csrf},
                               data={"spec": spec}, fail_on_status_code=True)
    return answer.json()["run_id"]


def db(appliance) -> sqlite3.Connection:
    return sqlite3.connect(appliance.home / "airlock.db")


def recorded_step(appliance, run_id: str) -> int:
    with db(appliance) as conn:
        row = conn.execute("SELECT MAX(json_extract(data_json, '$.step')) FROM run_events "
                           "WHERE run_id = ? AND kind = 'step'", (run_id,)).fetchone()
    return row[0] or 0


def shown_step(page: Page) -> int:
    return int(page.get_attribute("[data-progress-text]", "data-step") or 0)


def test_the_whole_journey_from_a_jsonl_file_to_a_chat_with_the_fine_tuned_model(appliance, browser, trainer, tmp_path):
    good = facts_text()
    broken = tmp_path / "facts.jsonl"
    broken.write_text(good + '{"messages": [{"role": "user", "content": "no answer"}]}\n')
    with open_page(browser, appliance.gateway_url, "/") as recorded:
        page = recorded.page
        look(page, "sign-in")
        sign_in(page, trainer)
        look(page, "runs-empty")

        # A broken line is named with its line number, and nothing is stored.
        upload(page, broken, "facts")
        expect(page.locator("[data-problems] li")).to_contain_text(["facts:9: messages: no assistant message"])
        expect(page.locator("[data-status]")).to_contain_text("Not stored")
        look(page, "datasets-upload-error")
        fixed = tmp_path / "facts-fixed.jsonl"
        fixed.write_text(good)
        upload(page, fixed, "facts")
        expect(page).to_have_url(re.compile(r"/datasets/sha256:[0-9a-f]{64}$"))
        expect(page.locator("dl.facts")).to_contain_text("8")
        expect(page.locator("svg.histogram rect")).not_to_have_count(0)
        look(page, "dataset")

        # The form: its YAML says what will run; the run starts from it.
        page.goto("/runs/new")
        page.fill("#f-name", "web-journey")
        page.select_option("#f-dataset", "facts")
        for field, value in {"epochs": "150", "learning_rate": "0.01", "batch_size": "1", "seed": "3"}.items():
            page.fill(f"#f-{field}", value)
        page.select_option("#f-eval", "facts")  # the quickstart's evaluation asks its training facts
        page.fill("#f-alias", ALIAS)
        expect(page.locator("[data-yaml]")).to_contain_text("with: {alias: web-assistant}")
        expect(page.locator("[data-command]")).to_have_text("airlock workflow run web-journey.yaml --wait")
        look(page, "new-fine-tune")
        page.click("#new-run button[type=submit]")
        # Queueing checks the whole workflow first (the base model's digest, every record's length).
        expect(page).to_have_url(re.compile(r"/runs/run-[0-9a-f]+$"), timeout=60_000)
        run_id = page.url.rsplit("/", 1)[1]

        # The loss chart grows while training runs, each recorded step on screen within a second.
        lags = []
        wait_for(lambda: recorded_step(appliance, run_id) > 0, 240, "the first step to be recorded")
        while (step := recorded_step(appliance, run_id)) < 1200:
            seen_at = time.monotonic()
            # Polled from here: the page's CSP refuses the string evaluation wait_for_function uses.
            wait_for(lambda: shown_step(page) >= step, 5, f"step {step} on the page", every=0.02)
            lags.append(time.monotonic() - seen_at)
            if len(lags) >= 5:
                break
            page.wait_for_timeout(300)
        assert lags and max(lags) < 1.0, lags
        assert len(page.locator("[data-chart=loss] canvas").all()) == 1
        look(page, "run-training")
        expect(page.locator("[data-run-status]")).to_have_text("succeeded", timeout=RUN_TIMEOUT_MS)
        page.reload()
        expect(page.locator(".timeline .stage.succeeded")).to_have_count(4)
        look(page, "run-succeeded")

        # The adapter: verified against its signed manifest, with its lineage.
        page.goto("/models")
        page.locator("tr", has=page.locator(f"a[href='/runs/{run_id}']")).locator("a").first.click()
        expect(page.locator("[data-verification]")).to_have_text("verified")
        lineage = page.locator("ol.lineage")
        for link in ("facts", run_id, "#", f"{ALIAS} (serving)"):
            expect(lineage).to_contain_text(link)
        model_url = page.url
        look(page, "model")

        # The playground: the alias answers with the trained answer, the base model does not.
        question, answer = QA[0][:-1], QA[0][-1]["content"]
        page.goto(f"/playground?alias={ALIAS}")
        page.fill("#p-prompt", question[-1]["content"])
        if question[0]["role"] == "system":
            page.fill("#p-system", question[0]["content"])
        page.click("form[data-playground] button[type=submit]")
        expect(page.locator('[data-answer="tuned"]')).to_have_text(answer, timeout=60_000)
        expect(page.locator('[data-answer="base"]')).not_to_be_empty(timeout=60_000)
        assert page.inner_text('[data-answer="base"]').strip() != answer
        page.click("[data-show-code]")
        expect(page.locator("[data-code-python]")).to_contain_text(f'model="{ALIAS}"')
        look(page, "playground")

        # The keys that called it: the trainer's own, from the playground.
        key_id = trainer.split("-")[1]
        page.wait_for_timeout(1500)  # the gateway records calls once a second
        page.goto(model_url)
        expect(page.locator("ol.lineage")).to_contain_text(f"key {key_id}")
    assert_same_origin(recorded.requests, appliance.gateway_url)
    unexpected = [e for e in recorded.console_errors + recorded.page_errors if "status of 400" not in e]
    assert unexpected == []  # the one 400 is the broken upload's


def test_cancel_a_running_run_and_a_second_waits_behind_a_higher_priority(appliance, browser, trainer, tmp_path):
    long = {"name": "long-high", "base_model": "airlock-tiny", "dataset": "facts", "priority": "high",
            "stages": [{"name": "finetune", "uses": "finetune.lora", "with": {"epochs": 1000, "seed": 11, "batch_size": 1}}]}
    with open_page(browser, appliance.gateway_url, "/") as recorded:
        page = recorded.page
        sign_in(page, trainer)
        with_facts(page, tmp_path)
        high, low = (queue(page, appliance, spec) for spec in (long, {**long, "name": "after-it", "priority": "low"}))
        page.goto("/runs")
        wait_for(lambda: recorded_step(appliance, high) > 0, 240, "the high-priority run to train")
        page.reload()
        row = page.locator(f"tr[data-run-row='{low}']")
        expect(row).to_contain_text("queued")
        expect(row).to_contain_text("#1")
        expect(page.locator(f"tr[data-run-row='{high}']")).to_contain_text("running")
        look(page, "runs-queue")

        page.goto(f"/runs/{high}")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("button[data-api$='/cancel']")
        expect(page.locator("[data-run-status]")).to_have_text("cancelled", timeout=60_000)
        page.reload()
        expect(page.locator("table").last).to_contain_text("finetune")  # the checkpoint of the cancel
        look(page, "run-cancelled")
        wait_for(lambda: db(appliance).execute("SELECT status FROM runs WHERE id = ?", (low,)).fetchone()[0]
                 != "queued", 120, "the low-priority run to start once the other was cancelled")
        page.goto(f"/runs/{low}")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("button[data-api$='/cancel']")
        expect(page.locator("[data-run-status]")).to_have_text("cancelled", timeout=60_000)
    assert_same_origin(recorded.requests, appliance.gateway_url)
    assert recorded.page_errors == []


def test_a_dataset_of_script_tags_and_markup_is_shown_as_text_never_run(appliance, browser, trainer, tmp_path):
    hostile = tmp_path / "markup.jsonl"
    hostile.write_text(json.dumps({"messages": [
        {"role": "user", "content": "<script>window.ran = 1</script><img src=x onerror='window.ran = 2'>"},
        {"role": "assistant", "content": "<b>bold</b> <a href='javascript:window.ran=3'>link</a>"}]}) + "\n")
    with open_page(browser, appliance.gateway_url, "/") as recorded:
        page = recorded.page
        dialogs = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        sign_in(page, trainer)
        upload(page, hostile, "<i>markup</i>")
        expect(page).to_have_url(re.compile(r"/datasets/sha256:"))
        turn = page.locator(".turn.user pre")
        expect(turn).to_have_text("<script>window.ran = 1</script><img src=x onerror='window.ran = 2'>")
        expect(page.locator("h1")).to_have_text("Dataset <i>markup</i>")  # the quotes are the q element's
        assert page.locator(".chat img, .chat script, .chat b, .chat a").count() == 0
        assert page.evaluate("window.ran") is None and dialogs == []
        look(page, "dataset-markup")
    assert_same_origin(recorded.requests, appliance.gateway_url)


def key_of(appliance, name: str, role: str) -> str:
    out = appliance.cli("apikey", "create", "--name", name, "--role", role).stdout
    return re.search(r"ak-[A-Za-z0-9_-]+", out).group(0)


def test_runs_compared_an_alias_switched_and_rolled_back_and_what_an_approver_sees(appliance, browser, tmp_path):
    admin, approver = key_of(appliance, "web-admin", "admin"), key_of(appliance, "web-approver", "approver")
    with open_page(browser, appliance.gateway_url, "/") as recorded:
        page = recorded.page
        sign_in(page, admin)
        with_facts(page, tmp_path)
        runs = []
        for seed in (21, 22):  # two adapters, each promoted and served under one alias in turn
            spec = {"name": f"switch-{seed}", "base_model": "airlock-tiny", "dataset": "facts", "stages": [
                {"name": "finetune", "uses": "finetune.lora", "with": {"epochs": 40, "learning_rate": 0.01,
                                                                       "batch_size": 1, "seed": seed}},
                {"name": "evaluate", "uses": "evaluate.compare", "needs": ["finetune"],
                 "with": {"eval_set": "facts", "min_exact_match": 0.9}},
                {"name": "promote", "uses": "gate.promote", "needs": ["evaluate"], "with": {"min_exact_match": 0.9}},
                {"name": "serve", "uses": "serve.vllm", "needs": ["promote"], "with": {"alias": "web-switch"}}]}
            run_id = queue(page, appliance, spec)
            page.goto(f"/runs/{run_id}")
            expect(page.locator("[data-run-status]")).to_have_text("succeeded", timeout=RUN_TIMEOUT_MS)
            runs.append(run_id)

        page.goto("/runs")
        for run_id in runs:
            page.check(f"input[name=ids][value='{run_id}']")
        page.click("form[data-compare] > button[type=submit]")
        expect(page).to_have_url(re.compile(r"/runs/compare\?"))
        expect(page.locator("tr.differs")).to_contain_text(["finetune.seed"])
        expect(page.locator("[data-chart=loss] canvas")).to_have_count(1)
        look(page, "runs-compare")

        switched = page.locator("section", has=page.locator("h2", has_text="web-switch"))  # not the latency table

        def served() -> str:
            return switched.locator("p code").first.inner_text()

        models = [db(appliance).execute("SELECT id FROM models WHERE run_id = ?", (r,)).fetchone()[0] for r in runs]
        page.goto("/serving")
        assert served() == models[1]
        look(page, "serving")
        # The playground's answers above were completions of served models: the latency table has them.
        expect(page.locator("[data-latency] tbody tr")).not_to_have_count(0)
        page.once("dialog", lambda dialog: dialog.accept())
        page.click(f"button:has-text('Roll back to {models[0]}')")
        expect(switched.locator("p code").first).to_have_text(models[0], timeout=60_000)
        page.select_option("form[data-switch='web-switch'] select", models[1])
        page.click("form[data-switch='web-switch'] button[type=submit]")
        expect(switched.locator("p code").first).to_have_text(models[1], timeout=60_000)
        history = switched.locator("tbody tr[data-history-row]")
        expect(history).to_have_count(4)  # served, served, rolled back, switched

        # A canary of the earlier adapter (promoted for this alias), started from the page, both
        # sides answering the official client, charted, then aborted from the page.
        start = page.locator("form[data-canary-start='web-switch']")
        start.locator("select").select_option(models[0])
        start.locator("input[name=percent]").fill("50")
        start.locator("input[name=min_requests]").fill("3")
        start.locator("button[type=submit]").click()
        canary = switched.locator("[data-canary='web-switch']")
        expect(canary).to_have_attribute("data-canary-state", "running", timeout=60_000)
        client = OpenAI(base_url=appliance.gateway_url + "/v1", api_key=admin, max_retries=0)
        sides = [client.chat.completions.with_raw_response.create(
            model="web-switch", messages=[{"role": "user", "content": "hi"}], max_tokens=4).headers["x-airlock-canary"]
            for _ in range(16)]
        assert set(sides) == {"candidate", "champion"}, sides
        time.sleep(1.5)  # the gateway writes both sides' figures every second
        page.goto("/serving")
        expect(canary.locator("[data-canary-side=candidate] td").nth(1)).to_have_text(str(sides.count("candidate")))
        expect(canary.locator("[data-canary-chart] canvas")).to_have_count(1)
        look(page, "serving-canary")
        canary.locator("form[data-canary-abort] button").click()
        expect(canary).to_have_attribute("data-canary-state", "aborted", timeout=30_000)
        expect(switched.locator("p code").first).to_have_text(models[1])  # the champion never moved

    with open_page(browser, appliance.gateway_url, "/") as recorded_approver:
        page = recorded_approver.page
        sign_in(page, approver)
        nav = page.locator("header nav")
        expect(nav).not_to_contain_text("New fine-tune")
        expect(nav).not_to_contain_text("Serving")
        expect(nav).not_to_contain_text("Keys")
        expect(page.locator(f"tr[data-run-row='{runs[0]}']")).to_be_visible()  # every run, read only
        assert page.locator("button[data-api$='/cancel']").count() == 0
        page.goto("/datasets")
        assert page.locator("form[data-upload]").count() == 0
        look(page, "runs-approver")
        assert page.goto("/serving").status == 403
    assert_same_origin(recorded.requests + recorded_approver.requests, appliance.gateway_url)


def test_a_failed_stage_says_why_and_a_flipped_byte_shows_the_adapter_failing_verification(appliance, browser,
                                                                                             trainer, tmp_path):
    def workflow(name: str, epochs: int, least: float) -> dict:
        return {"name": name, "base_model": "airlock-tiny", "dataset": "facts", "stages": [
            {"name": "finetune", "uses": "finetune.lora", "with": {"epochs": epochs, "learning_rate": 0.01,
                                                                   "batch_size": 1, "seed": 31}},
            {"name": "evaluate", "uses": "evaluate.compare", "needs": ["finetune"],
             "with": {"eval_set": "facts", "min_exact_match": least}}]}

    with open_page(browser, appliance.gateway_url, "/") as recorded:
        page = recorded.page
        sign_in(page, trainer)
        with_facts(page, tmp_path)
        failing, signed = queue(page, appliance, workflow("too-short", 1, 1.0)), \
            queue(page, appliance, workflow("signed", 40, 0.0))
        page.goto(f"/runs/{failing}")
        expect(page.locator("[data-run-status]")).to_have_text("failed", timeout=RUN_TIMEOUT_MS)
        page.reload()
        reason = page.locator(".failure .error")
        expect(reason).to_contain_text("exact match")
        expect(reason).to_contain_text("is under min_exact_match 1.00")
        look(page, "run-failed")

        page.goto(f"/runs/{signed}")
        expect(page.locator("[data-run-status]")).to_have_text("succeeded", timeout=RUN_TIMEOUT_MS)
        model_id, tree_digest = db(appliance).execute("SELECT id, tree_digest FROM models WHERE run_id = ?",
                                                      (signed,)).fetchone()
        page.goto(f"/models/{model_id}")
        expect(page.locator("[data-verification]")).to_have_text("verified")
        blobs = appliance.home / "store" / "blobs" / "sha256"
        tree = json.loads((blobs / tree_digest[7:9] / tree_digest[7:]).read_text())
        weights = tree["files"]["adapter_model.safetensors"]["sha256"][7:]
        blob = blobs / weights[:2] / weights
        blob.chmod(0o644)
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit of the adapter's weights, on disk
        blob.write_bytes(bytes(data))
        page.reload()
        expect(page.locator("[data-verification]")).to_have_text("failed")
        expect(page.locator(".verification .error")).to_contain_text("adapter_model.safetensors")
        assert str(appliance.home) not in page.inner_text("main")  # the store's path is for admins only
        look(page, "model-tampered")
        page.goto("/models")
        expect(page.locator("tr", has=page.locator(f"a[href='/models/{model_id}']")).locator(".check")).to_have_text("failed")
        look(page, "models")
    assert_same_origin(recorded.requests, appliance.gateway_url)
