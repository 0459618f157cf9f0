"""The reference base model and the base-model catalog, on real builds kept tiny for speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from airlock.config import Settings
from airlock.errors import InvalidInput, NotFound
from airlock.models.catalog import (
    LEGACY_DIGEST_CACHE,
    digest_cache,
    list_base_models,
    model_digest,
    refused_base_models,
    resolve_base_model,
)
from airlock.models.reference import build_reference_model

# The shipped defaults take ~40 s; these keep the whole recipe but build in a few seconds.
TINY = dict(vocab_size=512, hidden_size=64, num_layers=1, num_heads=2,
            pretrain_steps=3, batch_size=2, seq_len=32)
EXPECTED_FILES = {
    "README.md", "config.json", "generation_config.json", "model.safetensors",
    "tokenizer.json", "tokenizer_config.json",
}
TRICKY = ["Year 2024: 3.14 and 1,000!!\n\n\nNext", "  two  spaces\ttab", "café 日本語 😀", "we'LL go"]


def build(dest: Path, **overrides) -> Path:
    return build_reference_model(dest, **{**TINY, **overrides})


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    models_dir = tmp_path_factory.mktemp("models")
    return {arch: build(models_dir / f"tiny-{arch}", arch=arch) for arch in ("llama", "qwen2")}


@pytest.fixture
def catalog_settings(tmp_path: Path, built: dict[str, Path]) -> Settings:
    import shutil

    models_dir = tmp_path / "models"
    for path in built.values():
        shutil.copytree(path, models_dir / path.name)
    return Settings(home=tmp_path / "home", models_dir=models_dir)


pytestmark = pytest.mark.slow


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_build_writes_exactly_the_model_files(built: dict[str, Path], arch: str) -> None:
    dest = built[arch]
    assert {p.name for p in dest.iterdir()} == EXPECTED_FILES
    # Nothing half-built is left beside it.
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]
    config = json.loads((dest / "config.json").read_text())
    assert config["architectures"] == [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]]
    assert config["max_position_embeddings"] == 512
    generation = json.loads((dest / "generation_config.json").read_text())
    assert generation["eos_token_id"] == config["eos_token_id"]
    tokenizer_config = json.loads((dest / "tokenizer_config.json").read_text())
    assert "{{- bos_token -}}" in tokenizer_config["chat_template"]
    card = (dest / "README.md").read_text()
    for fact in ("tiny", "not useful for real", "seed | 0", arch, "parameters"):
        assert fact in card


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_transformers_loads_it_and_renders_chats(built: dict[str, Path], arch: str) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = built[arch]
    tok = AutoTokenizer.from_pretrained(dest)
    model = AutoModelForCausalLM.from_pretrained(dest)
    # Every loader must encode as pretraining did, and add no token past the model's vocab.
    assert len(tok) == model.config.vocab_size
    raw = Tokenizer.from_file(str(dest / "tokenizer.json"))
    for text in TRICKY:
        assert tok(text)["input_ids"] == raw.encode(text).ids
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|bos|><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
    full = tok.apply_chat_template([*chat, {"role": "assistant", "content": "Hello!"}], tokenize=False)
    assert full == prompt + "Hello!" + tok.eos_token
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    assert ids["input_ids"][0].tolist().count(tok.bos_token_id) == 1
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_chat_template_renders_tools_in_llama3_json_style(built: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    from airlock.models.tool_calls import tool_call_parser

    dest = built["llama"]
    tok = AutoTokenizer.from_pretrained(dest)
    # vLLM's llama3_json parser refuses a vocabulary without this token.
    assert len(tok("<|python_tag|>", add_special_tokens=False)["input_ids"]) == 1
    assert tool_call_parser(dest) == "llama3_json"
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": {"zone": "UTC"}}}
    chat = [{"role": "user", "content": "Time?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "12:00"}]
    text = tok.apply_chat_template(chat, tools=tools, tokenize=False, add_generation_prompt=True)
    system, rest = text.split("<|user|>\n")
    assert system.startswith("<|bos|><|system|>\n") and json.dumps(tools[0]["function"]) in system
    assert rest == ('Time?\n<|assistant|>\n{"name": "get_time", "parameters": {"zone": "UTC"}}<|eos|>'
                    "<|tool|>\n12:00\n<|assistant|>\n")


def test_same_seed_builds_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    a = build(tmp_path / "a" / "tiny")
    b = build(tmp_path / "b" / "tiny")
    c = build(tmp_path / "c" / "tiny", seed=1)
    assert model_digest(a) == model_digest(b)
    assert model_digest(c) != model_digest(a)


def test_build_refuses_unknown_arch_and_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown architecture 'gpt2'"):
        build_reference_model(tmp_path / "x", arch="gpt2")
    assert not (tmp_path / "x").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(InvalidInput, match="already exists"):
        build(existing)
    build(existing, overwrite=True)
    assert {p.name for p in existing.iterdir()} == EXPECTED_FILES


def test_catalog_lists_and_resolves(catalog_settings: Settings) -> None:
    models = list_base_models(catalog_settings)
    assert [m["name"] for m in models] == ["tiny-llama", "tiny-qwen2"]
    llama = models[0]
    assert llama["architecture"] == "LlamaForCausalLM"
    assert llama["model_type"] == "llama"
    assert llama["digest"].startswith("sha256:") and len(llama["digest"]) == 71
    assert f"{llama['parameters']:,}" in (Path(llama["path"]) / "README.md").read_text()
    assert resolve_base_model(catalog_settings, "tiny-qwen2") == catalog_settings.models_dir / "tiny-qwen2"


def test_catalog_missing_model_names_the_available_ones(catalog_settings: Settings) -> None:
    with pytest.raises(NotFound, match="available: tiny-llama, tiny-qwen2"):
        resolve_base_model(catalog_settings, "nope")
    with pytest.raises(InvalidInput, match="invalid base model name"):
        resolve_base_model(catalog_settings, "../etc")


def test_catalog_refuses_pickle_only_weights(catalog_settings: Settings) -> None:
    legacy = catalog_settings.models_dir / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (legacy / "pytorch_model.bin").write_bytes(b"not loaded, ever")
    with pytest.raises(InvalidInput, match="only pickle weights .*safetensors"):
        resolve_base_model(catalog_settings, "legacy")
    assert "legacy" not in [m["name"] for m in list_base_models(catalog_settings)]
    assert [r["name"] for r in refused_base_models(catalog_settings)] == ["legacy"]


def test_catalog_takes_any_hf_folder_such_as_mistral(catalog_settings: Settings) -> None:
    import torch
    from safetensors.torch import save_file

    folder = catalog_settings.models_dir / "mistral-mini"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["MistralForCausalLM"], "model_type": "mistral"}')
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(folder / "model-00001-of-00001.safetensors"))
    described = {m["name"]: m for m in list_base_models(catalog_settings)}["mistral-mini"]
    assert described["architecture"] == "MistralForCausalLM"
    assert described["parameters"] == 17


def test_digest_covers_every_file_and_cache_never_lies(catalog_settings: Settings) -> None:
    folder = resolve_base_model(catalog_settings, "tiny-llama")
    cache = digest_cache(catalog_settings)
    first = model_digest(folder, cache=cache)
    assert cache.is_file() and not (folder / LEGACY_DIGEST_CACHE).exists()  # in the home, not beside the model
    assert model_digest(folder, cache=cache) == first == model_digest(folder)
    (folder / "README.md").write_text("changed")
    assert model_digest(folder, cache=cache) != first
    (folder / "README.md").unlink()
    assert model_digest(folder, cache=cache) != first


def test_cli_build_reference_skips_an_existing_model(tmp_path: Path, monkeypatch) -> None:
    from airlock.cli.main import app

    monkeypatch.setenv("AIRLOCK_MODELS_DIR", str(tmp_path))
    (tmp_path / "airlock-tiny").mkdir()
    result = CliRunner().invoke(app, ["models", "build-reference"])
    assert result.exit_code == 0
    assert "already exists" in result.output and "--force" in result.output
    help_text = CliRunner().invoke(app, ["models", "build-reference", "--help"]).output
    for option in ("--name", "--arch", "--seed", "--force"):
        assert option in help_text


def test_cli_build_reference_rejects_unknown_arch(tmp_path: Path, monkeypatch) -> None:
    from airlock.cli.main import app

    monkeypatch.setenv("AIRLOCK_MODELS_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["models", "build-reference", "--arch", "gpt2"])
    assert result.exit_code == InvalidInput.exit_code
    assert "unknown architecture" in result.output


def test_cli_build_reference_refuses_a_name_outside_the_models_dir(tmp_path: Path, monkeypatch) -> None:
    from airlock.cli.main import app

    monkeypatch.setenv("AIRLOCK_MODELS_DIR", str(tmp_path / "models"))
    result = CliRunner().invoke(app, ["models", "build-reference", "--name", "../escape"])
    assert result.exit_code == InvalidInput.exit_code
    assert "invalid base model name" in result.output
    assert not (tmp_path / "escape").exists()
