"""Someone who can write the artifact store cannot change what a run trains on.

The attacker can write the store's files (a backup operator, a host admin of the store's disk):
they flip a byte of a stored dataset, or put another valid dataset's bytes under its digest. If
the attack succeeded, a reviewer would see a run train on records that nobody uploaded; here the
store hashes every read and the dataset is refused by its digest, with nothing loaded.
(An S3 object changed behind the store is the same refusal: tests/store/test_s3_stream.py.)
"""

from __future__ import annotations

import json

import pytest

from airlock.datasets.service import add_dataset, load_records
from airlock.errors import IntegrityFailure


def record(answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": "Which port?"},
                                    {"role": "assistant", "content": answer}]}) + "\n"


@pytest.mark.parametrize("tampering", ["a flipped byte", "another valid dataset's bytes"])
def test_a_changed_blob_is_refused_by_its_digest(airlock, tmp_path, tampering):
    uploaded, planted = tmp_path / "facts.jsonl", tmp_path / "planted.jsonl"
    uploaded.write_text(record("8080") * 4)
    planted.write_text(record("1337") * 4)
    digest = add_dataset(airlock, uploaded, name="facts")["digest"]
    assert load_records(airlock, digest)[0][1]["content"] == "8080"

    blob = airlock.store.blob_path(digest)
    blob.chmod(0o600)  # the attacker owns the disk; the store's own 0400 is no obstacle to them
    data = bytearray(blob.read_bytes())
    if tampering == "a flipped byte":
        data[data.index(b"8080")] ^= 0x01
    else:
        data = bytearray(planted.read_bytes())
    blob.write_bytes(bytes(data))

    with pytest.raises(IntegrityFailure, match=f"artifact {digest} at .* has changed"):
        load_records(airlock, digest)
