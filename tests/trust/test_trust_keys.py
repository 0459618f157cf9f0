"""The appliance key: created private and atomically, reloaded unchanged, refused when exposed."""

from __future__ import annotations

import os
import re
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airlock.errors import IntegrityFailure
from airlock.trust.keys import ensure_appliance_key, load_public_key, public_key_id


def raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_creates_a_private_key_and_its_public_half(settings):
    key = ensure_appliance_key(settings)
    private, public = settings.keys_dir / "appliance.key", settings.keys_dir / "appliance.pub"
    assert mode(private) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_key_id(load_public_key(public.read_bytes())) == public_key_id(key)
    assert not mode(settings.keys_dir) & 0o077
    # No temp file is left beside the key.
    assert sorted(p.name for p in settings.keys_dir.iterdir()) == ["appliance.key", "appliance.pub"]


def test_later_starts_load_the_same_key(settings):
    first = ensure_appliance_key(settings)
    second = ensure_appliance_key(settings)
    assert raw_private(first) == raw_private(second)


def test_a_lost_public_file_is_written_again(settings):
    key = ensure_appliance_key(settings)
    (settings.keys_dir / "appliance.pub").unlink()
    ensure_appliance_key(settings)
    pub = load_public_key((settings.keys_dir / "appliance.pub").read_bytes())
    assert public_key_id(pub) == public_key_id(key)


@pytest.mark.parametrize("exposed", [0o644, 0o640, 0o604, 0o660])
def test_a_key_readable_by_others_is_refused(settings, exposed):
    ensure_appliance_key(settings)
    (settings.keys_dir / "appliance.key").chmod(exposed)
    with pytest.raises(IntegrityFailure, match=f"mode {exposed:04o}.*chmod 600"):
        ensure_appliance_key(settings)


def test_a_public_file_of_another_key_is_refused(settings):
    ensure_appliance_key(settings)
    other = Ed25519PrivateKey.generate().public_key()
    (settings.keys_dir / "appliance.pub").write_bytes(
        other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(IntegrityFailure, match="does not belong to the appliance key"):
        ensure_appliance_key(settings)


def test_a_file_that_is_no_key_is_refused(settings):
    settings.keys_dir.mkdir(parents=True)
    path = settings.keys_dir / "appliance.key"
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(IntegrityFailure, match="not a readable PEM private key"):
        ensure_appliance_key(settings)


def test_public_key_id_is_short_stable_hex(settings):
    key = ensure_appliance_key(settings)
    keyid = public_key_id(key.public_key())
    assert re.fullmatch(r"[0-9a-f]{16}", keyid)
    assert public_key_id(key) == keyid
    assert public_key_id(Ed25519PrivateKey.generate()) != keyid
