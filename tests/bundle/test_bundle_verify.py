"""`verify_bundle` and `unpack` against real signed bundles, and every attack on them refused."""

from __future__ import annotations

import base64
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from airlock.bundle import manifest as bm
from airlock.bundle.check import unpack, verify_bundle
from airlock.errors import AirlockError, IntegrityFailure
from airlock.trust.root import canonical_json, parse_root
from bundle_factory import HOST, NOW, Keys, envelope, kid, make_bundle, root_doc


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture
def pinned(keys: Keys):
    return parse_root(root_doc(keys), source="pinned")


def check(bundle: Path, pinned, **kw):
    kw.setdefault("now", NOW)
    kw.setdefault("host", HOST)
    return verify_bundle(bundle, pinned=pinned, **kw)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_good_bundle_verifies_and_unpacks_to_exactly_its_files(tmp_path: Path, keys: Keys, pinned) -> None:
    m = make_bundle(tmp_path / "b", keys)
    assert len(m["parts"]) > 3  # really split
    verified = check(tmp_path / "b", pinned)
    unpack(tmp_path / "b", verified, tmp_path / "out")
    got = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert got == sorted(m["files"])
    assert (tmp_path / "out" / "models/tiny/model.safetensors").read_bytes() == \
        (tmp_path / "b-payload" / "models/tiny/model.safetensors").read_bytes()


def test_a_first_install_needs_the_fingerprint_from_out_of_band(tmp_path: Path, keys: Keys) -> None:
    make_bundle(tmp_path / "b", keys)
    assert check(tmp_path / "b", None, fingerprint=kid(keys.root[1])).root.version == 1
    with pytest.raises(IntegrityFailure, match="no root key of this root has the fingerprint"):
        check(tmp_path / "b", None, fingerprint=kid(keys.bundle[0]))
    with pytest.raises(IntegrityFailure, match="give the root key fingerprint"):
        check(tmp_path / "b", None)


def test_a_flipped_bit_in_a_part_names_the_part(tmp_path: Path, keys: Keys, pinned) -> None:
    m = make_bundle(tmp_path / "b", keys)
    flip(tmp_path / "b" / m["parts"][2]["name"], 1000)
    with pytest.raises(IntegrityFailure, match=m["parts"][2]["name"]):
        check(tmp_path / "b", pinned)


@pytest.mark.parametrize("victim", ["wheels/airlock_demo-1.0-py3-none-any.whl", "models/tiny/model.safetensors",
                                    "images/airlock-gateway.oci.tar"])
def test_a_file_that_differs_from_its_signed_digest_is_named(tmp_path: Path, keys: Keys, pinned, victim: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A bit flipped in a file before it was tarred (parts then match, the file does not)."""
    import bundle_factory as factory

    real = factory.file_entries

    def listed_then_flipped(root: Path) -> dict:
        entries = real(root)
        flip(root / victim, 5)
        return entries

    monkeypatch.setattr(factory, "file_entries", listed_then_flipped)
    make_bundle(tmp_path / "b", keys)
    verified = check(tmp_path / "b", pinned)
    with pytest.raises(IntegrityFailure, match=victim.replace(".", r"\.")):
        unpack(tmp_path / "b", verified, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_truncated_part_and_a_missing_part_are_named(tmp_path: Path, keys: Keys, pinned) -> None:
    m = make_bundle(tmp_path / "b", keys)
    part = tmp_path / "b" / m["parts"][1]["name"]
    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(IntegrityFailure, match=m["parts"][1]["name"]):
        check(tmp_path / "b", pinned)
    part.unlink()
    with pytest.raises(IntegrityFailure, match=m["parts"][1]["name"]):
        check(tmp_path / "b", pinned)


def test_an_edited_manifest_is_refused(tmp_path: Path, keys: Keys, pinned) -> None:
    make_bundle(tmp_path / "b", keys)
    shipped = tmp_path / "b" / bm.MANIFEST_NAME
    shipped.write_bytes(shipped.read_bytes().replace(b'"sequence":5', b'"sequence":9'))
    with pytest.raises(IntegrityFailure, match="readable copy was edited"):
        check(tmp_path / "b", pinned)
    # the signed payload edited inside the envelope: its signature no longer verifies
    env_path = tmp_path / "b" / bm.ENVELOPE_NAME
    env = json.loads(env_path.read_bytes())
    env["payload"] = base64.b64encode(shipped.read_bytes()).decode()
    env_path.write_bytes(canonical_json(env))
    with pytest.raises(IntegrityFailure, match="0 valid signature.*does not verify"):
        check(tmp_path / "b", pinned)


def _resign(bundle: Path, signers: list) -> None:
    payload = (bundle / bm.MANIFEST_NAME).read_bytes()
    (bundle / bm.ENVELOPE_NAME).write_bytes(canonical_json(envelope(payload, signers)))


def test_signatures_by_strangers_by_the_wrong_role_and_below_threshold(tmp_path: Path, keys: Keys, pinned) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    make_bundle(tmp_path / "b", keys)
    _resign(tmp_path / "b", [Ed25519PrivateKey.generate()])
    with pytest.raises(IntegrityFailure, match="is not in the root"):
        check(tmp_path / "b", pinned)
    _resign(tmp_path / "b", [keys.model[0], keys.root[0]])
    with pytest.raises(IntegrityFailure, match="not a key of role bundle"):
        check(tmp_path / "b", pinned)
    strict = parse_root(root_doc(keys, thresholds=(2, 2, 1)), source="pinned")
    _resign(tmp_path / "b", [keys.bundle[0], keys.bundle[0]])  # one key twice counts once
    with pytest.raises(IntegrityFailure, match="1 valid signature.* of role bundle, 2 needed"):
        check(tmp_path / "b", strict)
    _resign(tmp_path / "b", keys.bundle)
    assert check(tmp_path / "b", strict)


def test_expired_manifests_and_roots_are_refused(tmp_path: Path, keys: Keys, pinned) -> None:
    make_bundle(tmp_path / "b", keys, expires=NOW + timedelta(days=1))
    with pytest.raises(IntegrityFailure, match="bundle expired"):
        check(tmp_path / "b", pinned, now=NOW + timedelta(days=2))
    old = parse_root(root_doc(keys, expires=NOW - timedelta(seconds=1)), source="pinned")
    with pytest.raises(IntegrityFailure, match="trust root .*expired"):
        check(tmp_path / "b", old)


def test_a_sequence_below_the_installed_one_is_refused(tmp_path: Path, keys: Keys, pinned) -> None:
    make_bundle(tmp_path / "b", keys, sequence=5)
    with pytest.raises(IntegrityFailure, match="sequence 5 is below the installed bundle's 6"):
        check(tmp_path / "b", pinned, installed_sequence=6)


def test_a_new_root_comes_in_only_through_rotation(tmp_path: Path, keys: Keys, pinned) -> None:
    new = Keys(bundle=keys.bundle, model=keys.model)  # new root keys, same bundle key
    # signed by its own keys only: not by the threshold of the pinned root
    make_bundle(tmp_path / "a", keys, root=root_doc(new, version=2, signers=new.root[:2]))
    with pytest.raises(IntegrityFailure, match="by the trusted root version 1"):
        check(tmp_path / "a", pinned)
    # signed by both thresholds: accepted, and the bundle is verified under version 2
    make_bundle(tmp_path / "b", keys, root=root_doc(new, version=2, signers=[*keys.root[:2], *new.root[:2]]))
    assert check(tmp_path / "b", pinned).root.version == 2
    # a version that skips one is not a rotation
    make_bundle(tmp_path / "c", keys, root=root_doc(new, version=3, signers=[*keys.root[:2], *new.root[:2]]))
    with pytest.raises(AirlockError, match="root version 2"):
        check(tmp_path / "c", pinned)


def test_a_wrong_target_is_refused_before_anything_is_unpacked(tmp_path: Path, keys: Keys, pinned) -> None:
    make_bundle(tmp_path / "b", keys, target={"arch": "aarch64", "os": "linux", "glibc": "2.39", "python": "3.12",
                                              "cuda": "12.8"})
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(AirlockError) as err:
        check(tmp_path / "b", pinned)
    for needle in ("aarch64", "2.39", "3.12"):
        assert needle in str(err.value)
    assert sorted(os.listdir(tmp_path)) == before
