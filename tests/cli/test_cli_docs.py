"""Every command has help text, and docs/cli.md is exactly what the commands say."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from airlock.cli.docgen import render, walk
from airlock.cli.main import app
from airlock.config import REPO_ROOT


def test_every_command_has_help():
    missing = [" ".join(path) for path, cmd in walk(typer.main.get_command(app), ["airlock"]) if not (cmd.help or "").strip()]
    assert not missing, f"commands without help: {missing}"


def test_cli_reference_is_up_to_date():
    assert (REPO_ROOT / "docs" / "cli.md").read_text() == render(), \
        "docs/cli.md is stale: run `python -m airlock.cli.docgen > docs/cli.md`"


def test_help_runs_for_every_command():
    runner = CliRunner()
    for path, _ in walk(typer.main.get_command(app), ["airlock"]):
        result = runner.invoke(app, [*path[1:], "--help"])
        assert result.exit_code == 0, (path, result.output)
