"""Someone with the media an export travels on (a USB disk, a transfer share) changes it on the
way to where it is used: a flipped byte in the weights, a file added beside them, or a manifest
rewritten to match their own weights. `airlock models verify-export` (and the by-hand check in
docs/models.md, which it mirrors) must name each change."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from gate_support import signed_candidate
from typer.testing import CliRunner

from airlock.cli.main import app
from airlock.errors import IntegrityFailure
from airlock.promotion.exports import MANIFEST_NAME


def verify(folder) -> tuple[int, str]:
    done = CliRunner().invoke(app, ["models", "verify-export", str(folder)])
    return done.exit_code, done.output


@pytest.fixture
def exported(airlock, tmp_path):
    model_id = signed_candidate(airlock, tmp_path, 41)
    out = tmp_path / "export"
    done = CliRunner().invoke(app, ["models", "export", model_id, "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert verify(out)[0] == 0  # the control: untouched, it verifies
    return out


def test_a_flipped_byte_in_the_exported_weights_is_named(exported):
    """Had it worked, a reviewer would see `verify-export` pass on weights that differ from the
    ones the appliance signed."""
    weights = exported / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    code, output = verify(exported)
    assert code == IntegrityFailure.exit_code
    assert "adapter_model.safetensors: sha256 is sha256:" in output and "the manifest says" in output


def test_a_file_added_beside_the_signed_ones_is_named(exported):
    """Had it worked, a planted file (a pickle an unwary loader picks up) would travel as signed."""
    (exported / "pytorch_model.bin").write_bytes(b"planted")
    code, output = verify(exported)
    assert code == IntegrityFailure.exit_code and "pytorch_model.bin: not in the signed manifest" in output


def test_a_manifest_rewritten_for_other_weights_fails_its_signature(exported):
    """Had it worked, whoever changed the weights could also have made the manifest agree with them."""
    weights = exported / "adapter_model.safetensors"
    weights.write_bytes(b"other weights")
    envelope = json.loads((exported / MANIFEST_NAME).read_text())
    manifest = json.loads(base64.b64decode(envelope["payload"]))
    manifest["files"]["adapter_model.safetensors"] = {
        "sha256": "sha256:" + hashlib.sha256(b"other weights").hexdigest(), "size": len(b"other weights")}
    envelope["payload"] = base64.b64encode(json.dumps(manifest).encode()).decode()
    (exported / MANIFEST_NAME).write_text(json.dumps(envelope))
    code, output = verify(exported)
    assert code == IntegrityFailure.exit_code and "does not match the payload" in output
