"""Signed manifests: canonical payload, DSSE envelope, Ed25519 signature over the PAE."""

from __future__ import annotations

import base64
import copy
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airlock.errors import IntegrityFailure, InvalidInput
from airlock.trust.keys import public_key_id
from airlock.trust.manifest import (
    PAYLOAD_TYPE,
    build_manifest,
    canonical_json,
    directory_reader,
    pae,
    sign_manifest,
    verify_directory,
    verify_envelope,
    verify_files,
)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


FILES = {
    "adapter_config.json": {"sha256": digest(b"{}"), "size": 2},
    "adapter_model.safetensors": {"sha256": digest(b"weights"), "size": 7},
}


def manifest(**overrides) -> dict:
    args = dict(
        model_id="adp-0123456789ab",
        files=FILES,
        base_model={"name": "airlock-tiny", "digest": digest(b"base")},
        dataset_digest=digest(b"data"),
        training_config={"rank": 8, "lr": 0.001},
        eval_results={"exact_match": 0.75},
        extra={"run_id": "run-1"},
        created_at="2026-01-01T00:00:00.000+00:00",
    )
    args.update(overrides)
    return build_manifest(**args)


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_pae_matches_the_dsse_specification():
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae(PAYLOAD_TYPE, b"{}") == b"DSSEv1 37 application/vnd.airlock.manifest+json 2 {}"
    # Lengths count bytes, not characters.
    assert pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"
    assert pae("", b"") == b"DSSEv1 0  0 "


def test_canonical_json_is_sorted_compact_utf8():
    assert canonical_json({"b": 1, "a": ["é", {"d": None, "c": True}]}) == (
        '{"a":["é",{"c":true,"d":null}],"b":1}'.encode()
    )
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_manifest_fields():
    m = manifest()
    assert m == {
        "kind": "airlock.manifest/v1",
        "model_id": "adp-0123456789ab",
        "created_at": "2026-01-01T00:00:00.000+00:00",
        "base_model": {"name": "airlock-tiny", "digest": digest(b"base")},
        "dataset_digest": digest(b"data"),
        "files": FILES,
        "training_config": {"rank": 8, "lr": 0.001},
        "eval_results": {"exact_match": 0.75},
        "extra": {"run_id": "run-1"},
    }


def test_a_malformed_manifest_reports_every_problem():
    with pytest.raises(InvalidInput) as info:
        manifest(
            model_id="",
            files={"../escape": {"sha256": digest(b"x"), "size": 1},
                   "ok.bin": {"sha256": "md5:abc", "size": -1}},
            base_model={"name": "tiny"},
            dataset_digest="nope",
        )
    problems = info.value.problems
    assert len(problems) == 6
    assert "files: '../escape' is not a safe relative path" in problems
    assert any(p.startswith("files['ok.bin'].sha256") for p in problems)
    assert any(p.startswith("files['ok.bin'].size") for p in problems)
    assert any(p.startswith("base_model.digest") for p in problems)


def test_sign_and_verify_round_trip(key):
    m = manifest()
    envelope = sign_manifest(m, key)
    assert envelope["payloadType"] == PAYLOAD_TYPE
    assert base64.b64decode(envelope["payload"]) == canonical_json(m)
    assert envelope["signatures"][0]["keyid"] == public_key_id(key)
    assert verify_envelope(envelope, key.public_key()) == m


def test_the_signature_covers_the_pae_not_the_bare_payload(key):
    envelope = sign_manifest(manifest(), key)
    payload = base64.b64decode(envelope["payload"])
    sig = base64.b64decode(envelope["signatures"][0]["sig"])
    expected = b"DSSEv1 37 application/vnd.airlock.manifest+json %d " % len(payload) + payload
    key.public_key().verify(sig, expected)  # raises if it were signed over anything else


def _tampered_payload(envelope: dict) -> dict:
    payload = base64.b64decode(envelope["payload"]).replace(b'"exact_match":0.75', b'"exact_match":0.95')
    return {**envelope, "payload": base64.b64encode(payload).decode()}


def _tampered_sig(envelope: dict) -> dict:
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[0] ^= 0x01
    return {**envelope, "signatures": [{**envelope["signatures"][0], "sig": base64.b64encode(sig).decode()}]}


@pytest.mark.parametrize("tamper", [_tampered_payload, _tampered_sig], ids=["payload", "signature"])
def test_a_changed_byte_is_refused(key, tamper):
    envelope = tamper(sign_manifest(manifest(), key))
    with pytest.raises(IntegrityFailure, match="does not match the payload"):
        verify_envelope(envelope, key.public_key())


def test_a_changed_payload_type_is_refused(key):
    envelope = {**sign_manifest(manifest(), key), "payloadType": "application/json"}
    with pytest.raises(IntegrityFailure, match="payloadType"):
        verify_envelope(envelope, key.public_key())


def test_the_wrong_key_is_refused(key):
    other = Ed25519PrivateKey.generate()
    envelope = sign_manifest(manifest(), key)
    with pytest.raises(IntegrityFailure, match=f"not signed by key {public_key_id(other)}"):
        verify_envelope(envelope, other.public_key())
    # A keyid claiming to be the verifier's key proves nothing: the signature still has to check.
    forged = copy.deepcopy(envelope)
    forged["signatures"][0]["keyid"] = public_key_id(other)
    with pytest.raises(IntegrityFailure, match="does not match the payload"):
        verify_envelope(forged, other.public_key())


@pytest.mark.parametrize("envelope, match", [
    ([], "not a JSON object"),
    ({"payloadType": PAYLOAD_TYPE, "payload": "!!", "signatures": []}, "not valid base64"),
    ({"payloadType": PAYLOAD_TYPE, "payload": "e30=", "signatures": []}, "no signatures"),
])
def test_malformed_envelopes_are_refused(key, envelope, match):
    with pytest.raises(IntegrityFailure, match=match):
        verify_envelope(envelope, key.public_key())


def test_a_signed_payload_that_is_no_manifest_is_refused(key):
    payload = b'{"kind":"something-else"}'
    envelope = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
                "signatures": [{"keyid": public_key_id(key),
                                "sig": base64.b64encode(key.sign(pae(PAYLOAD_TYPE, payload))).decode()}]}
    with pytest.raises(IntegrityFailure, match="not an airlock.manifest/v1 manifest"):
        verify_envelope(envelope, key.public_key())


def test_verify_files_reports_every_mismatch_at_once():
    m = manifest(files={**FILES, "tokenizer.json": {"sha256": digest(b"tok"), "size": 3}})
    now = {
        "adapter_config.json": (digest(b"{}"), 2),  # unchanged
        "adapter_model.safetensors": (digest(b"WEIGHTS"), 7),  # changed bytes
        "tokenizer.json": (digest(b"tok"), 4),  # changed size
    }

    def read(rel):
        if rel not in now:
            raise FileNotFoundError(rel)
        return now[rel]

    with pytest.raises(IntegrityFailure) as info:
        verify_files(m, read, present=[*now, "extra.bin"])
    assert info.value.problems == [
        f"adapter_model.safetensors: sha256 is {digest(b'WEIGHTS')}, the manifest says {digest(b'weights')}",
        "tokenizer.json: 4 bytes, the manifest says 3",
        "extra.bin: not in the signed manifest",
    ]
    now.pop("adapter_config.json")
    with pytest.raises(IntegrityFailure) as info:
        verify_files(m, read)
    assert "adapter_config.json: missing" in info.value.problems


def test_verify_directory(tmp_path):
    (tmp_path / "adapter_config.json").write_bytes(b"{}")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    m = manifest()
    verify_directory(m, tmp_path)
    assert directory_reader(tmp_path)("adapter_config.json") == (digest(b"{}"), 2)

    (tmp_path / "adapter_model.safetensors").write_bytes(b"weightz")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "extra.py").write_bytes(b"print()")
    with pytest.raises(IntegrityFailure) as info:
        verify_directory(m, tmp_path)
    assert [p.split(":")[0] for p in info.value.problems] == ["adapter_model.safetensors", "sub/extra.py"]
    with pytest.raises(FileNotFoundError):
        directory_reader(tmp_path)("../outside")
