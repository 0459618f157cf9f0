"""`airlock datasets ...` through the real Typer app: output, exit codes, nothing stored on error."""

from __future__ import annotations

import json

import pytest
from jsonl_helpers import qa
from typer.testing import CliRunner

from airlock.cli.main import app
from airlock.context import Airlock
from airlock.errors import InvalidInput

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["datasets", *args])


@pytest.mark.parametrize("command", [[], ["validate"], ["add"], ["list"], ["share"], ["unshare"]])
def test_every_command_has_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_validate_a_valid_file(settings, write_jsonl):
    result = invoke("validate", str(write_jsonl(qa(), qa("a?", "b"))))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("data.jsonl: valid, 2 records in chat format (2 lines), sha256:")


def test_validate_json(settings, write_jsonl):
    result = invoke("validate", "--json", str(write_jsonl({"prompt": "a", "completion": "b"})))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["format"], summary["records"], summary["lines"]) == ("prompt_completion", 1, 1)


def test_validate_lists_every_problem_and_exits_with_the_error_code(settings, write_jsonl):
    path = write_jsonl(qa(), {"messages": [{"role": "bot", "content": "[bold]x[/bold]"}]}, "[1]", "{")
    result = invoke("validate", str(path))
    assert result.exit_code == InvalidInput.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == "error: data.jsonl is not a valid dataset: 3 problems"
    assert lines[1:] == [
        "  data.jsonl:2: messages[0].role: 'bot' is not one of system, user, assistant",
        "  data.jsonl:3: expected a JSON object, got array",
        "  data.jsonl:4: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
    ]
    assert result.stdout == ""


def test_add_then_list(settings, write_jsonl):
    result = invoke("add", str(write_jsonl(qa())), "--name", "faq")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("dataset 'faq' of operator: 1 records in chat format, sha256:")

    listed = invoke("list")
    assert listed.exit_code == 0, listed.output
    header, row = listed.stdout.splitlines()
    assert header.split() == ["DIGEST", "OWNER", "NAME", "FORMAT", "RECORDS", "CREATED"]
    assert row.split()[1:5] == ["operator", "faq", "chat", "1"]

    rows = json.loads(invoke("list", "--json").stdout)
    assert [(r["name"], r["records"]) for r in rows] == [("faq", 1)]


def test_list_when_empty(settings):
    result = invoke("list")
    assert result.exit_code == 0
    assert "no datasets yet" in result.stdout
    assert json.loads(invoke("list", "--json").stdout) == []


def test_add_an_invalid_file_stores_nothing(settings, write_jsonl):
    result = invoke("add", str(write_jsonl(qa(), {"prompt": "x", "completion": "y"})))
    assert result.exit_code == 2
    assert "data.jsonl:2: a prompt/completion record in a file that is chat" in result.stderr
    airlock = Airlock.open(settings)
    assert airlock.meta.query("SELECT * FROM datasets") == []
    assert not [p for p in settings.store_dir.rglob("*") if p.is_file()]


def test_a_missing_file_is_not_found(settings, tmp_path):
    result = invoke("validate", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 3
    assert "dataset file not found" in result.stderr


def test_max_length_needs_a_model(settings, write_jsonl):
    result = invoke("validate", str(write_jsonl(qa())), "--max-length", "10")
    assert result.exit_code == 2
    assert "--max-length needs --model" in result.stderr


def test_too_long_records_with_a_tokenizer_folder(settings, write_jsonl, tokenizer, tmp_path):
    folder = tmp_path / "tok"
    tokenizer.save_pretrained(folder)
    path = write_jsonl(qa(), qa("hello world " * 40, "ok"))
    result = invoke("validate", str(path), "--model", str(folder), "--max-length", "64")
    assert result.exit_code == 2
    assert "data.jsonl:2: messages:" in result.stderr
    assert "longer than the model's context of 64 tokens" in result.stderr
    assert invoke("validate", str(path), "--model", str(folder), "--max-length", "4096").exit_code == 0
