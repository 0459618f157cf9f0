"""`airlock apikey create|list|revoke`: the key is printed once and works against the service layer."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from airlock.cli.main import app
from airlock.access.keys import authenticate
from airlock.meta import open_meta

runner = CliRunner()


def test_create_list_revoke(settings):
    created = runner.invoke(app, ["apikey", "create", "--name", "reports"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[0]
    assert secret.startswith("ak-")
    assert "cannot be shown again" in created.stderr
    meta = open_meta(settings.db_path)
    key_id = authenticate(meta, f"Bearer {secret}")["id"]

    listed = runner.invoke(app, ["apikey", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["name"], r["revoked_at"]) for r in rows] == [(key_id, "reports", None)]
    assert secret not in listed.stdout

    table = runner.invoke(app, ["apikey", "list"])
    assert key_id in table.stdout and "active" in table.stdout

    revoked = runner.invoke(app, ["apikey", "revoke", key_id])
    assert revoked.exit_code == 0, revoked.output
    assert "revoked" in revoked.stdout
    rows = json.loads(runner.invoke(app, ["apikey", "list", "--json"]).stdout)
    assert rows[0]["revoked_at"]
    assert json.loads(runner.invoke(app, ["apikey", "list", "--json", "--active"]).stdout) == []


def test_errors_exit_with_the_error_code(settings):
    missing = runner.invoke(app, ["apikey", "revoke", "nope"])
    assert missing.exit_code == 3
    assert "no API key" in missing.stderr
    blank = runner.invoke(app, ["apikey", "create", "--name", " "])
    assert blank.exit_code == 2


def test_every_command_has_help():
    for args in (["apikey"], ["apikey", "create"], ["apikey", "list"], ["apikey", "revoke"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0
        assert "Usage" in result.stdout


def test_a_keys_own_max_tokens_is_stored_listed_and_checked(settings, monkeypatch):
    created = runner.invoke(app, ["apikey", "create", "--name", "summaries", "--max-tokens", "300", "--json"])
    assert created.exit_code == 0, created.output
    key = json.loads(created.stdout)
    assert json.loads(runner.invoke(app, ["apikey", "list", "--json"]).stdout)[0]["max_tokens"] == 300
    # The CLI's console takes its width when first imported, so a table is as wide as that terminal
    # was, whatever COLUMNS says now: widen the console itself so the limits cell is not wrapped.
    from airlock.cli.common import console

    monkeypatch.setattr(console, "width", 200)
    assert "300 max_tokens" in runner.invoke(app, ["apikey", "list"]).stdout
    assert authenticate(open_meta(settings.db_path), f"Bearer {key['key']}")["max_tokens"] == 300
    negative = runner.invoke(app, ["apikey", "create", "--name", "x", "--max-tokens", "-1"])
    assert negative.exit_code == 2 and "--max-tokens -1" in negative.stderr
