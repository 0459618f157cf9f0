"""Someone who can write the artifact store (a backup operator, a host admin of the store's disk)
changes a stored adapter's bytes, then waits for the operator to export it: the export must be
refused before a byte is written, so the changed weights never leave under the appliance's
signature."""

from __future__ import annotations

import json

from gate_support import signed_candidate
from typer.testing import CliRunner

from airlock.cli.main import app
from airlock.errors import IntegrityFailure
from airlock.models.adapters import get_model


def test_a_flipped_byte_in_the_stored_adapter_is_refused_and_nothing_is_written(airlock, tmp_path):
    """Had it worked, a reviewer would see the folder written, its airlock-export.json signed by
    the appliance over weights nobody trained, and `verify-export` pass on it."""
    model_id = signed_candidate(airlock, tmp_path, 31)
    files = airlock.store.tree_index(get_model(airlock, model_id)["tree_digest"])
    blob = airlock.store.blob_path(files["adapter_model.safetensors"]["sha256"])
    blob.chmod(0o600)  # the attacker owns the disk; the store's own 0400 is no obstacle to them
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    for merged in ([], ["--merged"]):
        out = tmp_path / f"out{len(merged)}"
        done = CliRunner().invoke(app, ["models", "export", model_id, "--out", str(out), *merged])
        assert done.exit_code == IntegrityFailure.exit_code, done.output
        assert model_id in done.output and "adapter_model.safetensors" in done.output
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial sibling
    assert airlock.meta.query("SELECT 1 FROM audit WHERE action = 'model.exported'") == []
    # The failed check is on the model's row, where `airlock models list` and the web UI show it.
    assert "adapter_model.safetensors" in json.dumps(get_model(airlock, model_id)["check_error"])
