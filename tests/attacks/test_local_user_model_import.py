"""A model folder carried in by someone who wants code to run on the appliance: pickle files that
run code when loaded, custom code named by auto_map, and modules named to shadow the ones the
importer itself imports. The operator imports it with the real `airlock` command, run from inside
the folder; every payload is first shown to be live (it writes its marker when Python meets it
the ordinary way), then the import must refuse the folder, naming each file, with the marker
never written and nothing admitted."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from model_folders import edit_json, hf_folder

pytestmark = pytest.mark.slow
AIRLOCK = Path(sys.executable).with_name("airlock")  # the console script an operator runs


class _RunsCode:
    """Unpickling this calls exec: what a hostile pytorch_model.bin does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pickle ran')",)


def payload(marker: Path, what: str) -> str:
    return f"open({str(marker)!r}, 'w').write({what!r})\n"


@pytest.fixture
def carried(tmp_path: Path, tiny_models_dir: Path) -> Path:
    return hf_folder(tmp_path / "carried", tiny_models_dir / "airlock-tiny")


def run_import(folder: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AIRLOCK_HOME": str(tmp_path / "home"), "AIRLOCK_MODELS_DIR": str(tmp_path / "models"),
           "COLUMNS": "400"}
    return subprocess.run([str(AIRLOCK), "models", "import", ".", "--name", "site-model"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)


def admitted(tmp_path: Path) -> list[str]:
    models = tmp_path / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def test_pickle_files_are_refused_and_never_unpickled(carried: Path, tmp_path: Path) -> None:
    """Were any pickle loaded, the marker would exist and the refusal would not name the file."""
    marker = tmp_path / "pickle-ran"
    hostile = pickle.dumps(_RunsCode(marker))
    # The payload is live: loading it the ordinary way writes the marker.
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=hostile, check=True, timeout=60)
    assert marker.exists()
    marker.unlink()
    (carried / "original").mkdir()
    for name in ("pytorch_model.bin", "original/consolidated.pth", "optimizer.pt", "rng_state.pkl", "train.ckpt"):
        (carried / name).write_bytes(hostile)

    done = run_import(carried, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    refusal = " ".join(done.stderr.split())
    assert "(5 problems; nothing was admitted)" in refusal
    for name in ("pytorch_model.bin", "original/consolidated.pth", "optimizer.pt", "rng_state.pkl", "train.ckpt"):
        assert f"{name}: a pickle-based file" in refusal
    assert not marker.exists() and admitted(tmp_path) == []


def test_custom_code_is_refused_and_never_run(carried: Path, tmp_path: Path) -> None:
    """Were any of the folder's code imported (through auto_map, or by shadowing a module the
    importer or its tokenizer child imports), the marker would exist."""
    marker = tmp_path / "code-ran"
    code = {"modeling_evil.py": "modeling", "tokenization_evil.py": "tokenizer", "json.py": "json shadowed",
            "transformers.py": "transformers shadowed", "typer.py": "typer shadowed"}
    for name, what in code.items():
        (carried / name).write_text(payload(marker, what))
    # The payload is live: Python started in the folder imports the folder's json.py first.
    subprocess.run([sys.executable, "-c", "import json"], cwd=carried, check=True, timeout=60)
    assert marker.read_text() == "json shadowed"
    marker.unlink()
    edit_json(carried / "config.json", auto_map={"AutoConfig": "modeling_evil.EvilConfig",
                                                 "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    edit_json(carried / "tokenizer_config.json", auto_map={"AutoTokenizer": ["tokenization_evil.Evil", None]},
              tokenizer_class="Evil")

    done = run_import(carried, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    refusal = " ".join(done.stderr.split())
    assert "config.json: auto_map names custom code (AutoConfig -> modeling_evil.EvilConfig" in refusal
    assert "tokenizer_config.json: auto_map names custom code (AutoTokenizer" in refusal
    for name in code:
        assert f"{name}: code: airlock runs no code that comes with a model" in refusal
    assert not marker.exists() and admitted(tmp_path) == []


def test_a_folder_stripped_of_the_payloads_is_admitted(carried: Path, tmp_path: Path) -> None:
    """The refusals above are for the payloads, not for the folder: without them it is admitted
    (so those tests cannot pass by refusing everything)."""
    shutil.rmtree(tmp_path / "models", ignore_errors=True)
    done = run_import(carried, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert admitted(tmp_path) == ["site-model"]


@pytest.mark.parametrize("swapped", ["tokenizer.json", "extra/notes.txt"])
def test_a_file_swapped_for_a_link_during_the_copy_is_not_followed(carried: Path, tmp_path: Path,
                                                                     swapped: str) -> None:
    """Whoever can write the source folder swaps a file (or the folder holding it) for a link to a
    host secret after the folder was scanned, while the copy runs. Were the link followed, the
    secret would lie in the models folder, readable by the engine's account."""
    from airlock.config import Settings
    from airlock.context import Airlock
    from airlock.errors import InvalidInput
    from airlock.models.admission import admit_folder

    secret = tmp_path / "secret" / Path(swapped).name
    secret.parent.mkdir()
    secret.write_text("SECRET-BYTES")
    (carried / "extra").mkdir()
    (carried / "extra" / "notes.txt").write_text("notes")
    swap_done = []

    def swap(stage: str, done: int, total: int) -> None:  # called while the first file is copied
        if swap_done:
            return
        target = carried / swapped.split("/")[0]
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        target.symlink_to(secret if target.name == secret.name else secret.parent)
        swap_done.append(True)

    site = Airlock.open(Settings(home=tmp_path / "home", models_dir=tmp_path / "models"))
    with pytest.raises(InvalidInput, match=f"{swapped.split('/')[0]}.* changed while it was imported"):
        admit_folder(site, carried, name="site-model", actor="os:test", progress=swap)
    assert swap_done and admitted(tmp_path) == []
    copies = [p for p in (tmp_path / "models").rglob("*") if p.is_file() and "SECRET" in p.read_text(errors="replace")]
    assert copies == []
