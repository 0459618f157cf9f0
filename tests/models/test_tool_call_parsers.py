"""The catalog names the vLLM tool-call parser of each base model's family, or none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airlock.config import Settings
from airlock.models.catalog import describe_model, list_base_models
from airlock.models.tool_calls import PARSERS, tool_call_parser


def model(folder: Path, model_type: str | None, added_tokens: list[str] | None = None) -> Path:
    """A model folder as the catalog reads it: config.json, weights, and a tokenizer.json with
    `added_tokens` when given (none at all stands for a sentencepiece or mistral-common one)."""
    folder.mkdir(parents=True)
    config = {"architectures": ["X"]} | ({"model_type": model_type} if model_type else {})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")
    if added_tokens is not None:
        tokenizer = {"added_tokens": [{"id": i, "content": t} for i, t in enumerate(added_tokens)],
                     "model": {"type": "BPE", "vocab": {"a": 0}}}
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    return folder


@pytest.mark.parametrize(("model_type", "tokens", "parser"), [
    ("llama", ["<|begin_of_text|>", "<|python_tag|>"], "llama3_json"),
    ("llama", ["<s>", "</s>"], None),  # Llama 2: vLLM's llama3_json parser would stop the engine
    ("mistral", ["[INST]", "[TOOL_CALLS]"], "mistral"),
    ("mistral", ["[INST]"], None),  # Mistral 7B v0.1
    ("mistral", None, "mistral"),  # no tokenizer.json to read: the family decides
    ("qwen2", ["<|im_start|>"], "hermes"),
    ("qwen3", None, "hermes"),
    ("qwen3_moe", None, "hermes"),
    ("jamba", ["<tool_calls>"], None),  # both markers are needed
    ("gpt2", None, None),
    (None, None, None),
])
def test_parser_follows_the_family_and_its_markers(tmp_path, model_type, tokens, parser):
    folder = model(tmp_path / "m", model_type, tokens)
    assert tool_call_parser(folder) == parser
    assert describe_model(folder)["tool_call_parser"] == parser


def test_the_override_is_the_served_models_and_none_turns_tools_off(tmp_path):
    models_dir = tmp_path / "models"
    model(models_dir / "served", "gpt2")
    model(models_dir / "other", "qwen2")
    settings = Settings(home=tmp_path, models_dir=models_dir, serve_base_model="served",
                        tool_call_parser="pythonic")
    assert {m["name"]: m["tool_call_parser"] for m in list_base_models(settings)} == {
        "other": "hermes", "served": "pythonic"}
    settings = Settings(home=tmp_path, models_dir=models_dir, serve_base_model="other",
                        tool_call_parser="none")
    assert {m["name"]: m["tool_call_parser"] for m in list_base_models(settings)} == {
        "other": None, "served": None}


def test_cli_lists_the_parser_or_no_tool_calls(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from airlock.cli.main import app

    model(tmp_path / "models" / "qwen-mini", "qwen2")
    model(tmp_path / "models" / "gpt-mini", "gpt2")
    monkeypatch.setenv("AIRLOCK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRLOCK_MODELS_DIR", str(tmp_path / "models"))
    # The CLI's console takes its width when first imported (another test's COLUMNS, perhaps):
    # widen the console itself so no name is cut.
    from airlock.cli.common import console

    monkeypatch.setattr(console, "width", 200)
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if "-mini" in line}
    assert "hermes" in rows["qwen-mini"] and "none" in rows["gpt-mini"]


@pytest.mark.slow
def test_every_parser_in_the_table_is_registered_by_vllm():
    from vllm.tool_parsers import ToolParserManager

    assert {name for name, _ in PARSERS.values()} <= set(ToolParserManager.list_registered())
