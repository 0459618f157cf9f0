"""A local user (`nobody`) who can write a base model's weights swaps their bytes and sets the
file's size and mtime back, and plants the hash cache that earlier releases trusted beside the
weights: the digest the appliance lists and records for a run must be the new bytes' digest."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.config import Settings
from airlock.models.catalog import LEGACY_DIGEST_CACHE, digest_cache, list_base_models, model_digest

NOBODY = 65534
# Flip one byte in place and put the mtime back: size and mtime are then exactly as before.
FLIP = """
import os, sys
path = sys.argv[1]
st = os.stat(path)
with open(path, "r+b") as f:
    f.seek(100)
    byte = f.read(1)
    f.seek(100)
    f.write(bytes([byte[0] ^ 0xFF]))
os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
"""


@pytest.fixture
def models_dir() -> Iterator[Path]:
    """A models folder `nobody` can reach, with one model whose weights `nobody` owns (the premise:
    a shared or carried folder the appliance does not own alone)."""
    if os.geteuid() != 0:
        pytest.fail("needs root: the weights are changed by another user (nobody)")
    root = Path(tempfile.mkdtemp(prefix="airlock-digest-attack-"))
    root.chmod(0o755)
    folder = root / "shared-model"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    weights = folder / "model.safetensors"
    header = b'{"w": {"dtype": "U8", "shape": [65536], "data_offsets": [0, 65536]}}'
    weights.write_bytes(len(header).to_bytes(8, "little") + header + os.urandom(64 * 1024))
    os.chown(weights, NOBODY, NOBODY)  # setting an mtime back takes owning the file
    try:
        yield root
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_weights_changed_behind_size_and_mtime_get_a_new_digest(models_dir: Path, tmp_path: Path) -> None:
    """If the attack succeeded, a reviewer would see the model listed (and a run recorded) under
    the digest of the weights as they were before nobody changed them."""
    settings = Settings(home=tmp_path / "home", models_dir=models_dir)
    folder = models_dir / "shared-model"
    weights = folder / "model.safetensors"
    before = list_base_models(settings)[0]["digest"]
    assert digest_cache(settings).is_file()  # the hashes are remembered, in the home
    st = weights.stat()
    # What the old cache held, written by the attacker beside the weights: it must not be read.
    (folder / LEGACY_DIGEST_CACHE).write_text(json.dumps({"version": 1, "files": {
        "model.safetensors": {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": "0" * 64}}}))

    done = subprocess.run(["/usr/bin/python3", "-c", FLIP, str(weights)], user=NOBODY, group=NOBODY,
                          extra_groups=[], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    after_st = weights.stat()
    assert (after_st.st_size, after_st.st_mtime_ns) == (st.st_size, st.st_mtime_ns)  # the attack's premise
    assert after_st.st_ctime_ns != st.st_ctime_ns  # what the kernel stamps, and nobody could set back

    after = list_base_models(settings)[0]["digest"]
    assert after != before
    assert after == model_digest(folder)  # every byte hashed again: the same answer as no cache at all


def test_a_cache_entry_survives_only_while_the_file_is_untouched(tmp_path: Path) -> None:
    """If the cache were keyed by size and mtime only, a reviewer would see a rewrite with the
    same size, followed by os.utime, keep the old digest."""
    folder = tmp_path / "models" / "m"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"a" * 4096)
    cache = tmp_path / "home" / "cache" / "digests.json"
    first = model_digest(folder, cache=cache)
    assert model_digest(folder, cache=cache) == first
    st = weights.stat()
    weights.write_bytes(b"b" * 4096)  # the owner's own rewrite, same size
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert model_digest(folder, cache=cache) == model_digest(folder) != first
    assert oct(cache.stat().st_mode & 0o777) == "0o600"
