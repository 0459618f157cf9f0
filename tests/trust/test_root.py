"""The trust root's checks: shape, self-signature, rotation, DSSE envelopes, and both Ed25519 backends."""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from airlock.errors import IntegrityFailure
from airlock.trust import ed25519
from airlock.trust.ceremony import sign_envelope, sign_root
from airlock.trust.keyfiles import public_raw, signing_key_id as kid
from airlock.trust.root import canonical_json, pae, parse_root, update_chain, verify_envelope, verify_root_self
from airlock.trust.root import verify_rotation
from root_factory import NOW, Keys, new_keys, root_doc, signed_part

PTYPE = "application/vnd.airlock.test+json"
PAYLOAD = b'{"sequence":7}'


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture
def root(keys: Keys):
    return verify_root_self(root_doc(keys), now=NOW, source="root.json")


def envelope_check(envelope: dict, root, role: str = "bundle", **kw):
    kw.setdefault("now", NOW)
    return verify_envelope(envelope, root, role, payload_type=PTYPE, **kw)


# --- the first root -------------------------------------------------------------------------------

def test_a_root_signed_by_its_own_threshold_is_accepted(keys: Keys, root) -> None:
    assert root.version == 1 and root.expires == NOW + timedelta(days=365)
    assert root.roles["root"].keyids == tuple(kid(k) for k in keys.root) and root.roles["root"].threshold == 2
    assert root.keys[kid(keys.bundle[0])] == public_raw(keys.bundle[0])


def test_a_root_below_its_own_threshold_is_refused(keys: Keys) -> None:
    with pytest.raises(IntegrityFailure, match=r"root.json: 1 valid signature\(s\) of role root, 2 needed"):
        verify_root_self(root_doc(keys, signers=keys.root[:1]), now=NOW, source="root.json")


def test_a_root_signed_by_non_root_keys_is_refused(keys: Keys) -> None:
    doc = root_doc(keys, signers=[keys.root[0], keys.bundle[0]])
    with pytest.raises(IntegrityFailure, match=f"key {kid(keys.bundle[0])} is not a key of role root "
                                               r"\(role bundle\)"):
        verify_root_self(doc, now=NOW, source="root.json")


def test_an_expired_root_is_refused(keys: Keys) -> None:
    doc = root_doc(keys, expires=NOW - timedelta(seconds=1))
    with pytest.raises(IntegrityFailure, match="version 1.*expired at 2026-11-23T11:59:59Z"):
        verify_root_self(doc, now=NOW, source="root.json")


def test_one_changed_byte_in_the_signed_root_breaks_its_signatures(keys: Keys) -> None:
    doc = root_doc(keys)
    doc["signed"]["expires"] = doc["signed"]["expires"].replace("2027", "2037")
    with pytest.raises(IntegrityFailure, match=f"0 valid.*the signature of key {kid(keys.root[0])} does not verify"):
        verify_root_self(doc, now=NOW, source="root.json")


def test_every_shape_problem_is_listed_at_once(keys: Keys) -> None:
    doc = root_doc(keys)
    signed = doc["signed"]
    stranger = new_keys(1)[0]
    signed["keys"]["f" * 64] = {"keytype": "ed25519", "public": public_raw(stranger).hex()}  # id is not its sha256
    signed["roles"]["bundle"]["keyids"].append("e" * 64)  # names a key the root does not hold
    signed["roles"]["model"]["threshold"] = 0
    signed["roles"]["root"]["threshold"] = 4  # above its 3 keys
    signed["roles"]["mirror"] = signed["roles"].pop("bundle") | {}
    signed["extra"] = 1
    with pytest.raises(IntegrityFailure) as caught:
        parse_root(doc, source="root.json")
    problems = "\n".join(caught.value.problems)
    assert str(caught.value).startswith("root.json: the trust root is malformed")
    for expected in (f"signed.keys[{'f' * 64}]: the id is not the sha256 of its public key",
                     "signed.roles: role(s) bundle missing", "unknown role(s) mirror",
                     "signed.roles.model.threshold: 0 is not between 1 and 1",
                     "signed.roles.root.threshold: 4 is not between 1 and 3",
                     "fields _type, expires, extra, keys, roles, version"):
        assert expected in problems, (expected, problems)


def test_a_role_naming_an_unknown_key_and_unknown_role_fields_are_refused(keys: Keys) -> None:
    doc = root_doc(keys)
    doc["signed"]["roles"]["bundle"]["keyids"].append("e" * 64)
    doc["signed"]["roles"]["model"]["paths"] = ["*"]
    with pytest.raises(IntegrityFailure) as caught:
        parse_root(doc, source="root.json")
    assert f"signed.roles.bundle: key id(s) {'e' * 64} not in signed.keys" in caught.value.problems
    assert "signed.roles.model: expected exactly {keyids, threshold}" in caught.value.problems


# --- rotation -------------------------------------------------------------------------------------

def rotated(keys: Keys, new_root: list, *, version: int = 2, signers: list | None = None, **kw) -> dict:
    new = Keys(root=new_root, bundle=keys.bundle, model=keys.model)
    return sign_root(signed_part(new, version=version, **kw),
                     [*keys.root[:2], *new_root[:2]] if signers is None else signers)


def test_a_rotation_signed_by_both_thresholds_is_accepted(keys: Keys, root) -> None:
    fresh = new_keys(3)
    new = verify_rotation(root, rotated(keys, fresh), now=NOW, source="root v2")
    assert new.version == 2 and new.roles["root"].keyids == tuple(kid(k) for k in fresh)


def test_a_rotation_not_signed_by_the_old_threshold_is_refused(keys: Keys, root) -> None:
    fresh = new_keys(3)
    doc = rotated(keys, fresh, signers=[keys.root[0], *fresh[:2]])
    with pytest.raises(IntegrityFailure, match=r"by the trusted root version 1\): 1 valid signature\(s\) of role "
                                               "root, 2 needed"):
        verify_rotation(root, doc, now=NOW, source="root v2")


def test_a_rotation_not_signed_by_its_own_threshold_is_refused(keys: Keys, root) -> None:
    fresh = new_keys(3)
    doc = rotated(keys, fresh, signers=[*keys.root[:2], fresh[0]])
    with pytest.raises(IntegrityFailure, match=r"by its own root keys\): 1 valid signature\(s\) of role root, "
                                               "2 needed"):
        verify_rotation(root, doc, now=NOW, source="root v2")


@pytest.mark.parametrize("version, reason", [(1, "version 1 is not newer than the trusted root's version 1"),
                                             (3, "version 3 cannot follow the trusted root's version 1: only 2")])
def test_a_rotation_whose_version_is_not_n_plus_1_is_refused(keys: Keys, root, version: int, reason: str) -> None:
    with pytest.raises(IntegrityFailure, match=reason):
        verify_rotation(root, rotated(keys, new_keys(3), version=version), now=NOW, source="root")


def test_an_expired_rotation_is_refused(keys: Keys, root) -> None:
    doc = rotated(keys, new_keys(3), expires=NOW - timedelta(days=1))
    with pytest.raises(IntegrityFailure, match="version 2.*expired"):
        verify_rotation(root, doc, now=NOW, source="root v2")


def test_a_chain_is_walked_in_order_and_stops_at_a_gap(keys: Keys, root) -> None:
    second = new_keys(3)
    v2 = rotated(keys, second)
    v3 = rotated(Keys(root=second, bundle=keys.bundle, model=keys.model), new_keys(3), version=3)
    assert update_chain(root, [v2, v3], now=NOW).version == 3
    with pytest.raises(IntegrityFailure, match="new root 1 of 1: version 3 cannot follow"):
        update_chain(root, [v3], now=NOW)


# --- envelopes ------------------------------------------------------------------------------------

def test_an_envelope_signed_by_its_role_returns_the_payload(keys: Keys, root) -> None:
    assert envelope_check(sign_envelope(PAYLOAD, PTYPE, keys.bundle[:1]), root) == PAYLOAD


def test_an_envelope_signed_by_a_key_not_in_the_root_is_refused(keys: Keys, root) -> None:
    stranger = new_keys(1)[0]
    with pytest.raises(IntegrityFailure, match=rf"0 valid signature\(s\) of role bundle, 1 needed \(key "
                                               rf"{kid(stranger)} is not in the root\)"):
        envelope_check(sign_envelope(PAYLOAD, PTYPE, [stranger]), root)


def test_an_envelope_signed_by_a_key_of_another_role_is_refused(keys: Keys, root) -> None:
    with pytest.raises(IntegrityFailure, match=rf"key {kid(keys.model[0])} is not a key of role bundle "
                                               r"\(role model\)"):
        envelope_check(sign_envelope(PAYLOAD, PTYPE, [keys.model[0], keys.root[0]]), root)


def test_an_envelope_below_the_role_threshold_is_refused(keys: Keys) -> None:
    strict = parse_root(root_doc(keys, thresholds=(2, 2, 1)), source="root.json")
    envelope = sign_envelope(PAYLOAD, PTYPE, keys.bundle[:1])
    with pytest.raises(IntegrityFailure, match=r"1 valid signature\(s\) of role bundle, 2 needed"):
        envelope_check(envelope, strict)
    assert envelope_check(sign_envelope(PAYLOAD, PTYPE, keys.bundle), strict) == PAYLOAD


def test_the_same_key_signing_twice_counts_once(keys: Keys) -> None:
    strict = parse_root(root_doc(keys, thresholds=(2, 2, 1)), source="root.json")
    envelope = sign_envelope(PAYLOAD, PTYPE, keys.bundle[:1])
    envelope["signatures"] *= 2
    with pytest.raises(IntegrityFailure, match=r"1 valid signature\(s\) of role bundle, 2 needed"):
        envelope_check(envelope, strict)


def test_one_changed_byte_in_the_payload_is_refused(keys: Keys, root) -> None:
    envelope = sign_envelope(PAYLOAD, PTYPE, keys.bundle[:1])
    envelope["payload"] = base64.b64encode(PAYLOAD.replace(b"7", b"8")).decode()
    with pytest.raises(IntegrityFailure, match=f"the signature of key {kid(keys.bundle[0])} does not verify"):
        envelope_check(envelope, root)


def test_a_payload_type_other_than_the_signed_one_is_refused(keys: Keys, root) -> None:
    envelope = sign_envelope(PAYLOAD, "application/other", keys.bundle[:1])
    with pytest.raises(IntegrityFailure, match="payloadType 'application/other', expected"):
        envelope_check(envelope, root)
    envelope["payloadType"] = PTYPE  # relabelled: the PAE covered the other type
    with pytest.raises(IntegrityFailure, match="does not verify"):
        envelope_check(envelope, root)


def test_an_envelope_under_an_expired_root_is_refused(keys: Keys) -> None:
    old = parse_root(root_doc(keys, expires=NOW - timedelta(seconds=1)), source="root.json")
    with pytest.raises(IntegrityFailure, match="the trust root: the trust root \\(version 1\\) expired"):
        envelope_check(sign_envelope(PAYLOAD, PTYPE, keys.bundle[:1]), old)


def test_a_key_in_two_roles_counts_for_each_but_roles_count_only_their_own_keys(keys: Keys) -> None:
    shared = Keys(root=keys.root, bundle=[keys.bundle[0]], model=[keys.bundle[0], keys.model[0]])
    root = verify_root_self(root_doc(shared), now=NOW, source="root.json")
    envelope = sign_envelope(PAYLOAD, PTYPE, [keys.bundle[0]])
    assert envelope_check(envelope, root, "bundle") == envelope_check(envelope, root, "model") == PAYLOAD
    with pytest.raises(IntegrityFailure, match=rf"{kid(keys.model[0])} is not a key of role bundle \(role model\)"):
        envelope_check(sign_envelope(PAYLOAD, PTYPE, [keys.model[0]]), root, "bundle")


def test_pae_is_dsse_v1() -> None:
    # The example of the DSSE specification (protocol.md).
    assert pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert canonical_json({"b": [1, "\u00e9"], "a": None}) == '{"a":null,"b":[1,"\u00e9"]}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


# --- Ed25519: both backends -----------------------------------------------------------------------

def test_public_pem_and_fingerprints_match_what_cryptography_writes() -> None:
    key = new_keys(1)[0]
    raw = public_raw(key)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert ed25519.public_pem(raw) == pem and ed25519.raw_from_pem(pem) == raw
    assert ed25519.key_id(raw) == kid(key) and len(kid(key)) == 64
    assert ed25519.fingerprint_text(raw).replace(" ", "") == kid(key)
    assert [len(g) for g in ed25519.fingerprint_text(raw).split(" ")] == [4] * 16
    with pytest.raises(IntegrityFailure, match="pub.pem: not an Ed25519 public key"):
        ed25519.raw_from_pem(ed25519.public_pem(raw + b"x"), source="pub.pem")


def verdicts(monkeypatch: pytest.MonkeyPatch, backend: str) -> list[bool]:
    key, other = new_keys(2)
    message = b"airlock \x00 bytes"
    good = key.sign(message)
    bad = bytes([good[0] ^ 1]) + good[1:]
    monkeypatch.setenv(ed25519.BACKEND_ENV, backend)
    assert ed25519.backend() == backend
    return [ed25519.verify(public_raw(key), good, message), ed25519.verify(public_raw(key), bad, message),
            ed25519.verify(public_raw(key), good, message + b"!"), ed25519.verify(public_raw(other), good, message),
            ed25519.verify(public_raw(key), good[:63], message)]


@pytest.mark.parametrize("backend", ["openssl", "cryptography"])
def test_both_backends_accept_a_good_signature_and_refuse_bad_ones(monkeypatch, backend: str) -> None:
    assert verdicts(monkeypatch, backend) == [True, False, False, False, False]


def test_both_backends_agree_on_an_envelope(monkeypatch, keys: Keys, root) -> None:
    good = sign_envelope(PAYLOAD, PTYPE, keys.bundle[:1])
    bad = copy.deepcopy(good)
    bad["payload"] = base64.b64encode(PAYLOAD + b" ").decode()
    for backend in ("openssl", "cryptography"):
        monkeypatch.setenv(ed25519.BACKEND_ENV, backend)
        assert envelope_check(good, root) == PAYLOAD
        with pytest.raises(IntegrityFailure, match="does not verify"):
            envelope_check(bad, root)


def test_a_host_without_openssl_or_with_a_bad_backend_name_gets_a_clear_error(monkeypatch, tmp_path: Path) -> None:
    key = new_keys(1)[0]
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no openssl on this PATH
    monkeypatch.setenv(ed25519.BACKEND_ENV, "openssl")
    with pytest.raises(IntegrityFailure, match="neither the Python package `cryptography` nor the `openssl`"):
        ed25519.verify(public_raw(key), key.sign(b"m"), b"m")
    monkeypatch.setenv(ed25519.BACKEND_ENV, "gpg")
    with pytest.raises(IntegrityFailure, match="AIRLOCK_ED25519_BACKEND='gpg': expected `openssl` or `cryptography`"):
        ed25519.verify(public_raw(key), key.sign(b"m"), b"m")


# --- standard library only ------------------------------------------------------------------------

STDLIB_CHECK = textwrap.dedent("""
    import base64, json, subprocess, sys
    from datetime import datetime, timezone
    sys.path.insert(0, sys.argv[1])
    from airlock.trust import root as r
    work = sys.argv[2]
    assert "cryptography" not in sys.modules
    from airlock.trust.ed25519 import backend
    assert backend() == "openssl", backend()
    signed = json.load(open(work + "/signed.json"))
    message = r.canonical_json(signed)
    open(work + "/message", "wb").write(message)
    # Signed by the openssl command itself: an implementation independent of the one under test.
    sigs = []
    for i in (1, 2):
        subprocess.run(["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", f"{work}/root{i}.pem",
                        "-in", work + "/message", "-out", f"{work}/sig{i}"], check=True)
        sigs.append({"keyid": open(f"{work}/root{i}.id").read(), "sig": open(f"{work}/sig{i}", "rb").read().hex()})
    now = datetime(2026, 11, 23, 12, tzinfo=timezone.utc)
    root = r.verify_root_self({"signed": signed, "signatures": sigs}, now=now, source="root.json")
    try:
        r.verify_root_self({"signed": signed, "signatures": sigs[:1]}, now=now, source="root.json")
    except Exception as exc:
        assert "1 valid signature(s) of role root, 2 needed" in str(exc), exc
    else:
        raise AssertionError("one signature passed a threshold of two")
    envelope = json.load(open(work + "/envelope.json"))
    assert r.verify_envelope(envelope, root, "bundle", payload_type=envelope["payloadType"], now=now) == b"ok"
    print("stdlib-only ok")
""")


def test_the_verification_core_runs_on_a_bare_python_with_openssl(tmp_path: Path, keys: Keys) -> None:
    """ed25519.py and root.py travel in the stand-alone verifier: a bare python3, no cryptography."""
    src = Path(ed25519.__file__).parents[1]
    tree = tmp_path / "tree" / "airlock"
    (tree / "trust").mkdir(parents=True)
    for name in ("__init__.py", "trust/__init__.py"):
        (tree / name).write_text("")  # the real package markers import third-party code
    for name in ("errors.py", "trust/ed25519.py", "trust/root.py", "trust/pinned.py", "trust/atomic.py"):
        (tree / name).write_bytes((src / name).read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    (work / "signed.json").write_text(json.dumps(signed_part(keys)))
    for i, key in enumerate(keys.root[:2], 1):
        (work / f"root{i}.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
        (work / f"root{i}.id").write_text(kid(key))
    (work / "envelope.json").write_text(json.dumps(sign_envelope(b"ok", PTYPE, keys.bundle[:1])))
    env = {"PATH": os.environ["PATH"]}  # and nothing that could point python at site-packages
    done = subprocess.run([sys.executable, "-I", "-S", "-c", STDLIB_CHECK, str(tree.parent), str(work)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "stdlib-only ok" in done.stdout
    # pinned.py and atomic.py import too, with nothing but the standard library.
    done = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(tree.parent)!r}); "
                           "import airlock.trust.pinned; assert 'cryptography' not in sys.modules"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
