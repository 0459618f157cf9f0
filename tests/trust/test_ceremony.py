"""Key ceremonies on real files: passphrase-protected keys, root versions N+1 a client accepts."""

from __future__ import annotations

import json
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from airlock.errors import IntegrityFailure, InvalidInput, NotFound
from airlock.trust import ceremony
from airlock.trust.ed25519 import fingerprint_text, public_pem
from airlock.trust.keyfiles import create_key_file, load_signing_key, public_raw, signing_key_id as kid
from airlock.trust.root import parse_root, verify_envelope, verify_root_self, verify_rotation
from root_factory import NOW, new_keys

SECRET = b"correct horse battery staple"


def passphrase(_path: Path) -> bytes:
    return SECRET


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def made(tmp_path: Path) -> ceremony.InitResult:
    return ceremony.init_root(tmp_path / "ceremony", passphrase=passphrase, now=NOW)


def root_signers(made: ceremony.InitResult, *indexes: int) -> list:
    return [load_signing_key(made.key_files["root"][i], passphrase) for i in indexes]


def load(path: Path):
    return parse_root(json.loads(path.read_bytes()), source=str(path))


# --- init -----------------------------------------------------------------------------------------

def test_init_makes_a_2_of_3_root_and_private_encrypted_key_files(made: ceremony.InitResult) -> None:
    folder = made.root_path.parent
    root = verify_root_self(json.loads(made.root_path.read_bytes()), now=NOW, source="root.json")
    assert root.version == 1 and root.expires == NOW + timedelta(days=365) and made.warning is None
    assert {r: (len(role.keyids), role.threshold) for r, role in root.roles.items()} == \
        {"root": (3, 2), "bundle": (1, 1), "model": (1, 1)}
    names = sorted(p.name for p in (folder / "keys").iterdir())
    assert names == sorted(f"{n}.{ext}" for n in ("root-1", "root-2", "root-3", "bundle-1", "model-1")
                           for ext in ("key", "pub"))
    assert mode(folder / "keys") == 0o700 and mode(made.root_path) == 0o644
    for role, files in made.key_files.items():
        for path in files:
            assert mode(path) == 0o600
            assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
            key = load_signing_key(path, passphrase)
            assert kid(key) in root.roles[role].keyids
            assert path.with_suffix(".pub").read_bytes() == public_pem(public_raw(key))


def test_init_refuses_a_threshold_of_one_unless_demo(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="threshold 1 lets one lost or stolen key replace the root"):
        ceremony.init_root(tmp_path / "c", root_keys=1, threshold=1, passphrase=passphrase, now=NOW)
    assert not (tmp_path / "c").exists()
    demo = ceremony.init_root(tmp_path / "c", root_keys=1, threshold=1, demo=True, passphrase=passphrase, now=NOW)
    assert "NOT FOR PRODUCTION" in demo.warning
    assert set(json.loads(demo.root_path.read_bytes())) == {"signed", "signatures"}  # nothing extra in the file


def test_init_refuses_a_threshold_above_the_key_count(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="threshold 4 of 3 key"):
        ceremony.init_root(tmp_path / "c", root_keys=3, threshold=4, passphrase=passphrase, now=NOW)


def test_init_never_replaces_a_root_and_removes_its_keys_when_it_fails(tmp_path: Path, made) -> None:
    before = made.root_path.read_bytes()
    with pytest.raises(InvalidInput, match="root.json: exists"):
        ceremony.init_root(made.root_path.parent, passphrase=passphrase, now=NOW)
    assert made.root_path.read_bytes() == before
    asked: list[Path] = []

    def fails_on_the_third(path: Path) -> bytes:
        asked.append(path)
        if len(asked) == 3:
            raise InvalidInput(f"{path}: the two passphrases differ")
        return SECRET

    with pytest.raises(InvalidInput, match="root-3.key: the two passphrases differ"):
        ceremony.init_root(tmp_path / "other", passphrase=fails_on_the_third, now=NOW)
    assert list((tmp_path / "other" / "keys").iterdir()) == []


# --- key files ------------------------------------------------------------------------------------

def test_a_wrong_passphrase_is_refused_naming_the_file(made) -> None:
    path = made.key_files["root"][0]
    with pytest.raises(InvalidInput, match=f"{path}: wrong passphrase"):
        load_signing_key(path, lambda _p: b"wrong horse")


def test_a_key_file_readable_by_others_is_refused_before_the_passphrase_is_asked(made) -> None:
    path = made.key_files["root"][0]
    path.chmod(0o640)
    asked: list[Path] = []
    with pytest.raises(IntegrityFailure, match=f"{path}: mode 0640, group or others may read this key file"):
        load_signing_key(path, lambda p: asked.append(p) or SECRET)
    assert asked == []


def test_an_unencrypted_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.key"
    path.write_bytes(new_keys(1)[0].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    path.chmod(0o600)
    with pytest.raises(IntegrityFailure, match="plain.key: the key file is not passphrase-protected"):
        load_signing_key(path, passphrase)


def test_a_key_file_is_never_overwritten(made) -> None:
    path = made.key_files["bundle"][0]
    before = path.read_bytes()
    with pytest.raises(InvalidInput, match="bundle-1.key: exists; key files are never overwritten"):
        create_key_file(path, passphrase)
    assert path.read_bytes() == before
    with pytest.raises(NotFound, match="no such key file"):
        load_signing_key(path.with_name("missing.key"), passphrase)


# --- root versions N+1 ----------------------------------------------------------------------------

def test_add_key_writes_version_2_and_keeps_version_1_beside_it(tmp_path: Path, made) -> None:
    v1 = load(made.root_path)
    extra = create_key_file(tmp_path / "holder" / "alice.key", passphrase)
    v2 = ceremony.add_key(made.root_path, "bundle", (tmp_path / "holder" / "alice.pub").read_bytes(),
                          root_signers(made, 0, 1), now=NOW)
    assert v2.version == 2 and kid(extra) in v2.roles["bundle"].keyids and v2.roles["bundle"].threshold == 1
    assert load(made.root_path.with_name("1.root.json")).document == v1.document
    assert verify_rotation(v1, load(made.root_path).document, now=NOW, source="v2").version == 2
    with pytest.raises(InvalidInput, match=f"key {kid(extra)} is in role bundle already"):
        ceremony.add_key(made.root_path, "bundle", public_pem(public_raw(extra)), root_signers(made, 0, 1), now=NOW)


def test_a_ceremony_below_the_root_threshold_writes_nothing(made) -> None:
    before = made.root_path.read_bytes()
    with pytest.raises(IntegrityFailure, match=r"by the trusted root version 1\): 1 valid signature\(s\) of role "
                                               "root, 2 needed"):
        ceremony.add_key(made.root_path, "model", public_pem(public_raw(new_keys(1)[0])), root_signers(made, 2),
                         now=NOW)
    assert made.root_path.read_bytes() == before
    assert not made.root_path.with_name("1.root.json").exists()


def test_a_signing_key_outside_the_root_role_is_refused(made) -> None:
    bundle_key = load_signing_key(made.key_files["bundle"][0], passphrase)
    with pytest.raises(InvalidInput, match=f"signing key\\(s\\) {kid(bundle_key)} are root keys of neither"):
        ceremony.set_expiry(made.root_path, NOW + timedelta(days=30), [*root_signers(made, 0, 1), bundle_key],
                            now=NOW)


def test_revoke_key_removes_a_key_and_refuses_going_below_the_threshold(made) -> None:
    v1 = load(made.root_path)
    leaked = v1.roles["root"].keyids[2]
    v2 = ceremony.revoke_key(made.root_path, "root", fingerprint_text(v1.keys[leaked]), root_signers(made, 0, 1),
                             now=NOW)
    assert v2.roles["root"].keyids == v1.roles["root"].keyids[:2] and leaked not in v2.keys
    verify_rotation(v1, v2.document, now=NOW, source="v2")
    with pytest.raises(InvalidInput, match="would leave role root 1 key\\(s\\) for a threshold of 2"):
        ceremony.revoke_key(made.root_path, "root", v2.roles["root"].keyids[0], root_signers(made, 0, 1), now=NOW)
    with pytest.raises(InvalidInput, match=f"key {leaked} is not in role root"):
        ceremony.revoke_key(made.root_path, "root", leaked, root_signers(made, 0, 1), now=NOW)


def test_unknown_roles_are_refused(made) -> None:
    with pytest.raises(InvalidInput, match="role 'admin': expected one of root, bundle, model"):
        ceremony.revoke_key(made.root_path, "admin", "a" * 64, root_signers(made, 0, 1), now=NOW)


def test_rotate_replaces_the_root_keys_signed_by_both_thresholds(made) -> None:
    v1 = load(made.root_path)
    fresh = new_keys(3)
    publics = [public_raw(k) for k in fresh]
    with pytest.raises(IntegrityFailure, match="by its own root keys"):
        ceremony.rotate(made.root_path, publics, 2, root_signers(made, 0, 1), fresh[:1], now=NOW)
    with pytest.raises(InvalidInput, match="threshold 4 of 3 key"):
        ceremony.rotate(made.root_path, publics, 4, root_signers(made, 0, 1), fresh, now=NOW)
    v2 = ceremony.rotate(made.root_path, publics, 2, root_signers(made, 0, 1), fresh[:2], now=NOW)
    assert v2.roles["root"].keyids == tuple(kid(k) for k in fresh)
    assert not set(v1.roles["root"].keyids) & set(v2.keys)  # the old root keys left with their role
    verify_rotation(v1, v2.document, now=NOW, source="v2")


def test_set_expiry_renews_an_expired_root(made) -> None:
    later = NOW + timedelta(days=400)  # the root expired at day 365
    with pytest.raises(IntegrityFailure, match="expired"):
        verify_root_self(load(made.root_path).document, now=later, source="v1")
    v2 = ceremony.set_expiry(made.root_path, later + timedelta(days=365), root_signers(made, 0, 2), now=later)
    assert v2.expires == later + timedelta(days=365)
    verify_rotation(load(made.root_path.with_name("1.root.json")), v2.document, now=later, source="v2")


# --- envelopes and show ---------------------------------------------------------------------------

def test_sign_envelope_is_accepted_for_its_role_once_per_key(made) -> None:
    root = load(made.root_path)
    key = load_signing_key(made.key_files["bundle"][0], passphrase)
    envelope = ceremony.sign_envelope(b"{}", "application/x-test", [key, key])
    assert [s["keyid"] for s in envelope["signatures"]] == [kid(key)]
    assert verify_envelope(envelope, root, "bundle", payload_type="application/x-test", now=NOW) == b"{}"


def test_show_lists_every_role_and_every_key_fingerprint(made) -> None:
    root = load(made.root_path)
    text = ceremony.show(root, now=NOW)
    assert text.startswith("trust root version 1, expires 2027-11-23T12:00:00Z (in 365 day(s))")
    assert "role root: 2 of 3 key(s) must sign" in text and "role model: 1 of 1" in text
    for raw in root.keys.values():
        assert fingerprint_text(raw) in text
    assert "EXPIRED" in ceremony.show(root, now=NOW + timedelta(days=366))
