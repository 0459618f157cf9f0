"""`airlock models import`: real model folders (built by transformers, saved as safetensors) admitted
or refused through the real CLI and service, on a real home (SQLite) and models directory."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from model_folders import drop_chat_template, edit_json, hf_folder, rewrite_weights
from typer.testing import CliRunner

from airlock.cli.main import app
from airlock.config import Settings
from airlock.context import Airlock
from airlock.errors import InvalidInput
from airlock.meta.audit import list_rows
from airlock.models.admission import admit_folder
from airlock.models.catalog import list_base_models, model_digest, resolve_base_model
from airlock.models.provenance import PROVENANCE_FILE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_models_dir) -> dict[str, Path]:
    root, tokenizer = tmp_path_factory.mktemp("carried"), tiny_models_dir / "airlock-tiny"
    return {"llama": hf_folder(root / "llama", tokenizer),
            "qwen2": hf_folder(root / "qwen2", tokenizer, family="qwen2"),
            "mistral": hf_folder(root / "mistral", tokenizer, family="mistral", tied=True),
            "sharded": hf_folder(root / "sharded", tokenizer, max_shard_size="300KB")}


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Airlock:
    monkeypatch.setenv("AIRLOCK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRLOCK_MODELS_DIR", str(tmp_path / "models"))
    return Airlock.open(Settings(home=tmp_path / "home", models_dir=tmp_path / "models"))


@pytest.fixture
def folder(built: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(built["llama"], tmp_path / "carried"))


def models_dir_entries(site: Airlock) -> list[str]:
    models = Path(site.settings.models_dir)
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def test_a_good_folder_is_admitted_listed_and_trainable(site: Airlock, folder: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from airlock.train.config import LoraTrainConfig
    from airlock.train.recipe import finetune

    result = CliRunner().invoke(app, ["models", "import", str(folder), "--name", "site-llama"])
    assert result.exit_code == 0, result.output
    dest = Path(site.settings.models_dir) / "site-llama"
    assert models_dir_entries(site) == ["site-llama"]  # no staging copy left beside it
    assert sorted(p.name for p in dest.iterdir()) == sorted([p.name for p in folder.iterdir()] + [PROVENANCE_FILE])
    record = json.loads((dest / PROVENANCE_FILE).read_text())
    assert record["source"] == "folder" and record["imported_from"] == str(folder)
    assert record["imported_by"].startswith("os:") and record["imported_at"].endswith("+00:00")
    assert record["files"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                               for p in folder.iterdir()}
    # The record is not part of the model: the digest is the carried folder's own.
    assert model_digest(dest) == model_digest(folder)
    [row] = list_rows(site.meta, action="model.imported")
    assert row["subject"] == "site-llama" and row["detail"]["digest"] == model_digest(folder)
    assert row["detail"]["source"] == str(folder)

    listed = {m["name"]: m for m in list_base_models(site.settings)}["site-llama"]
    assert listed["context_length"] == 256 and listed["size_bytes"] == sum(p.stat().st_size for p in folder.iterdir())
    assert listed["parameters"] > 2048 * 64 and listed["served_by"] is None
    assert listed["chat_template"].startswith("{{- bos_token") and listed["provenance"]["source"] == "folder"
    as_json = json.loads(CliRunner().invoke(app, ["models", "list", "--json"]).stdout)
    assert [m["id"] for m in as_json if m["kind"] == "base-model"] == ["site-llama"]
    # The CLI's console takes its width when first imported: widen the console itself.
    from airlock.cli.common import console

    monkeypatch.setattr(console, "width", 250)
    table = CliRunner().invoke(app, ["models", "list"]).output
    assert "site-llama" in table and "folder (os:" in table

    records = [[{"role": "user", "content": "Door colour?"}, {"role": "assistant", "content": "Blue."}]] * 2
    out = tmp_path / "adapter"
    finetune(resolve_base_model(site.settings, "site-llama"), records, LoraTrainConfig(epochs=1, rank=4, batch_size=2),
             out)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    again = CliRunner().invoke(app, ["models", "import", str(folder), "--name", "site-llama"])
    assert again.exit_code == 0 and "already admitted" in again.output
    assert len(list_rows(site.meta, action="model.imported")) == 1


@pytest.mark.parametrize("kind", ["qwen2", "mistral", "sharded"])
def test_other_families_and_sharded_folders_are_admitted(site: Airlock, built: dict[str, Path], kind: str) -> None:
    model = admit_folder(site, built[kind], actor="os:test")
    assert model.name == kind and not model.already_present
    assert model.digest == model_digest(built[kind])
    assert {m["name"] for m in list_base_models(site.settings)} == {kind}


def add_pickle(folder: Path, settings: Settings) -> str:
    (folder / "training_args.bin").write_bytes(pickle.dumps({"lr": 1e-4}))
    return "training_args.bin: a pickle-based file (.bin)"


def add_auto_map(folder: Path, settings: Settings) -> str:
    edit_json(folder / "config.json", auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    return "config.json: auto_map names custom code (AutoModelForCausalLM -> modeling_x.XForCausalLM)"


def add_code(folder: Path, settings: Settings) -> str:
    (folder / "modeling_x.py").write_text("X = 1\n")
    return "modeling_x.py: code"


def flip_a_shape(folder: Path, settings: Settings) -> str:
    name = "model.layers.0.self_attn.k_proj.weight"
    rewrite_weights(folder / "model.safetensors", lambda t: t.update({name: t[name].T.contiguous()}))
    return f"model.safetensors: {name} has shape [64, 32], config.json implies [32, 64]"


def drop_a_layer(folder: Path, settings: Settings) -> str:
    def drop(tensors: dict) -> None:
        for name in [n for n in tensors if n.startswith("model.layers.1.")]:
            del tensors[name]
    rewrite_weights(folder / "model.safetensors", drop)
    return "model.safetensors: layer(s) 1 missing: config.json says num_hidden_layers 2"


def wrong_model_type(folder: Path, settings: Settings) -> str:
    edit_json(folder / "config.json", model_type="llama_custom")
    return ("config.json: model_type 'llama_custom' is not one that both PEFT and the installed vLLM support with "
            "LoRA; supported: gemma, gemma2, llama, mistral, qwen2, qwen3")


def no_chat_template(folder: Path, settings: Settings) -> str:
    drop_chat_template(folder)
    return "tokenizer: no chat template"


def link_outside(folder: Path, settings: Settings) -> str:
    os.symlink("/etc/passwd", folder / "notes.txt")
    return "notes.txt: a symbolic link to /etc/passwd (outside the folder)"


def too_big(folder: Path, settings: Settings) -> str:
    settings.model_import_max_bytes = 100_000
    return "more than the 100000 allowed (AIRLOCK_MODEL_IMPORT_MAX_BYTES)"


PROBLEMS = [add_pickle, add_auto_map, add_code, flip_a_shape, drop_a_layer, wrong_model_type, no_chat_template,
            link_outside, too_big]


@pytest.mark.parametrize("make_problem", PROBLEMS, ids=lambda f: f.__name__)
def test_each_problem_alone_is_refused_naming_its_file(site: Airlock, folder: Path, make_problem) -> None:
    expected = make_problem(folder, site.settings)
    with pytest.raises(InvalidInput) as refused:
        admit_folder(site, folder, actor="os:test")
    assert len(refused.value.problems) == 1 and expected in refused.value.problems[0], str(refused.value)
    assert models_dir_entries(site) == [] and list_rows(site.meta, action="model.imported") == []


def test_every_problem_at_once_is_named_in_one_error(site: Airlock, folder: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from airlock.cli.common import console, err_console

    expected = [make_problem(folder, site.settings) for make_problem in PROBLEMS]
    for each in (console, err_console):  # widths are taken when first imported: no wrapping inside a path
        monkeypatch.setattr(each, "width", 400)
    result = CliRunner().invoke(app, ["models", "import", str(folder)], env={"COLUMNS": "400",
                                "AIRLOCK_MODEL_IMPORT_MAX_BYTES": "100000"})
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert f"was not imported as 'carried' ({len(PROBLEMS)} problems; nothing was admitted)" in text
    for problem in expected:
        assert problem in text, problem
    assert models_dir_entries(site) == []


def test_a_model_without_chat_template_is_admitted_with_one_given(site: Airlock, folder: Path, tmp_path: Path) -> None:
    template = drop_chat_template(folder)
    with pytest.raises(InvalidInput, match="no chat template"):
        admit_folder(site, folder, actor="os:test")
    given = tmp_path / "template.jinja"
    given.write_text(template)
    model = admit_folder(site, folder, chat_template=given, actor="os:test")
    assert (model.path / "chat_template.jinja").read_text() == template
    record = json.loads((model.path / PROVENANCE_FILE).read_text())
    assert record["chat_template_from"] == str(given) and "chat_template.jinja" in record["files"]
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(model.path).chat_template == template
    # An admitted folder imported again, with a template of its own: its record and template are replaced.
    other = tmp_path / "other.jinja"
    other.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    again = admit_folder(site, model.path, name="again", chat_template=other, actor="os:test")
    record = json.loads((again.path / PROVENANCE_FILE).read_text())
    assert record["imported_from"] == str(model.path) and (again.path / "chat_template.jinja").read_text() == other.read_text()
    assert record["files"]["chat_template.jinja"] == hashlib.sha256(other.read_bytes()).hexdigest()


def test_a_template_that_does_not_render_is_refused(site: Airlock, folder: Path, tmp_path: Path) -> None:
    drop_chat_template(folder)
    given = tmp_path / "bad.jinja"
    given.write_text("{{ raise_exception('this template refuses every chat') }}")
    with pytest.raises(InvalidInput, match="chat template: does not render a one-message chat: .*refuses every chat"):
        admit_folder(site, folder, chat_template=given, actor="os:test")
    assert models_dir_entries(site) == []


def test_a_taken_name_is_refused_unless_identical(site: Airlock, folder: Path, built: dict[str, Path]) -> None:
    first = admit_folder(site, folder, name="site-model", actor="os:test")
    assert admit_folder(site, folder, name="site-model", actor="os:test").already_present
    with pytest.raises(InvalidInput) as refused:
        admit_folder(site, built["qwen2"], name="site-model", actor="os:test")
    assert refused.value.problems == [f"--name: 'site-model' is already taken in {site.settings.models_dir} by a "
                                      f"different model ({first.digest}); choose another --name"]
    assert model_digest(first.path) == first.digest and models_dir_entries(site) == ["site-model"]


def test_a_shard_index_that_disagrees_with_the_shards_is_refused(site: Airlock, built: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    folder = Path(shutil.copytree(built["sharded"], tmp_path / "sharded"))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    moved = "model.layers.1.mlp.up_proj.weight"
    shard = index["weight_map"][moved]
    other = next(f for f in sorted(set(index["weight_map"].values())) if f != shard)
    index["weight_map"][moved] = other
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidInput) as refused:
        admit_folder(site, folder, actor="os:test")
    text = str(refused.value)
    assert f"{other}: does not hold what model.safetensors.index.json says: 1 tensor(s) listed but absent ({moved})" in text
    assert f"{shard}: does not hold what model.safetensors.index.json says" in text and "present but not listed" in text


def test_an_import_killed_while_copying_admits_nothing(site: Airlock, folder: Path) -> None:
    """kill -9 of a real import process in the middle of its copy: no model appears; the next import
    removes the abandoned copy."""
    with (folder / "notes.txt").open("wb") as f:
        f.truncate(1 << 30)  # sparse: a gigabyte to copy, nothing on the source's disk
    env = {**os.environ, "AIRLOCK_HOME": str(site.settings.home), "AIRLOCK_MODELS_DIR": str(site.settings.models_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "airlock", "models", "import", str(folder), "--name", "big"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    models, deadline = Path(site.settings.models_dir), time.monotonic() + 120
    partial = None
    while partial is None and time.monotonic() < deadline and proc.poll() is None:
        copies = [p / "notes.txt" for p in models.glob(".big.importing-*")] if models.exists() else []
        partial = next((c for c in copies if c.exists() and 0 < c.stat().st_size < 1 << 30), None)
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial is not None, "the import was not caught in the middle of its copy"
    assert not (models / "big").exists() and "big" not in {m["name"] for m in list_base_models(site.settings)}
    assert list_rows(site.meta, action="model.imported") == []
    (folder / "notes.txt").unlink()
    admit_folder(site, folder, name="big", actor="os:test")
    assert models_dir_entries(site) == ["big"]


def test_a_tokenizer_that_takes_too_long_is_killed_and_named(folder: Path) -> None:
    from airlock.models.tokenizer_probe import probe_tokenizer

    started = time.monotonic()
    report = probe_tokenizer(folder, timeout_s=0.5)  # importing transformers alone takes longer
    assert time.monotonic() - started < 10
    assert report == {"error": "it did not load within 0.5 s (the limit is AIRLOCK_MODEL_IMPORT_TOKENIZER_TIMEOUT_S)"}


@pytest.mark.parametrize(("setting", "value", "expected"), [
    ("model_import_max_files", 3, "more than 3 files (AIRLOCK_MODEL_IMPORT_MAX_FILES)"),
    ("model_import_max_header_bytes", 256, "model.safetensors: its header claims"),
])
def test_the_file_count_and_header_limits_hold(site: Airlock, folder: Path, setting: str, value: int,
                                               expected: str) -> None:
    setattr(site.settings, setting, value)
    with pytest.raises(InvalidInput) as refused:
        admit_folder(site, folder, actor="os:test")
    assert expected in str(refused.value) and models_dir_entries(site) == []
