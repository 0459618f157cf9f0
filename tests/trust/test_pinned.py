"""The appliance's pinned root: pinned once against an out-of-band fingerprint, then only rotated."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest

from airlock.errors import IntegrityFailure, InvalidInput, NotFound
from airlock.trust.ceremony import sign_root
from airlock.trust.ed25519 import fingerprint_text
from airlock.trust.keyfiles import public_raw, signing_key_id as kid
from airlock.trust.pinned import accept_new_roots, load_pinned, pin_first, trust_dir
from airlock.trust.root import canonical_json
from root_factory import NOW, Keys, new_keys, root_doc, signed_part


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "trust"


def rotation(old: Keys, version: int, *, signers: str = "both") -> tuple[Keys, dict]:
    new = Keys(root=new_keys(3), bundle=old.bundle, model=old.model)
    chosen = {"both": [*old.root[:2], *new.root[:2]], "new only": new.root}[signers]
    return new, sign_root(signed_part(new, version=version), chosen)


def test_trust_dir_is_under_the_appliance_home(settings) -> None:
    assert trust_dir(settings) == settings.home / "trust"


def test_a_first_root_is_pinned_when_a_fingerprint_matches(keys: Keys, folder: Path) -> None:
    spoken = fingerprint_text(public_raw(keys.root[1])).upper()  # as read aloud, groups of four
    root = pin_first(folder, root_doc(keys), spoken, now=NOW)
    path = folder / "root.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_bytes() == canonical_json(root.document)
    assert load_pinned(folder).document == root.document


def test_a_fingerprint_of_no_root_key_pins_nothing(keys: Keys, folder: Path) -> None:
    for wrong in (kid(new_keys(1)[0]), kid(keys.bundle[0])):  # a stranger; a key of another role
        with pytest.raises(IntegrityFailure, match=f"no root key of this root has the fingerprint\\(s\\) {wrong}"):
            pin_first(folder, root_doc(keys), wrong, now=NOW)
    assert not (folder / "root.json").exists()


def test_every_fingerprint_given_must_match(keys: Keys, folder: Path) -> None:
    stranger = kid(new_keys(1)[0])
    with pytest.raises(IntegrityFailure, match=stranger):
        pin_first(folder, root_doc(keys), [kid(keys.root[0]), stranger], now=NOW)
    with pytest.raises(InvalidInput, match="expected the 64 hex digits"):
        pin_first(folder, root_doc(keys), kid(keys.root[0])[:16], now=NOW)  # a prefix is not a fingerprint
    assert pin_first(folder, root_doc(keys), [kid(k) for k in keys.root], now=NOW).version == 1


def test_a_root_below_its_own_threshold_is_not_pinned(keys: Keys, folder: Path) -> None:
    with pytest.raises(IntegrityFailure, match="1 valid signature"):
        pin_first(folder, root_doc(keys, signers=keys.root[:1]), kid(keys.root[0]), now=NOW)
    assert not (folder / "root.json").exists()


def test_a_pinned_root_is_not_replaced_by_a_second_pin(keys: Keys, folder: Path) -> None:
    pin_first(folder, root_doc(keys), kid(keys.root[0]), now=NOW)
    before = (folder / "root.json").read_bytes()
    other = Keys()
    with pytest.raises(InvalidInput, match="a trust root is pinned already"):
        pin_first(folder, root_doc(other), kid(other.root[0]), now=NOW)
    assert (folder / "root.json").read_bytes() == before


def test_a_rotation_replaces_the_pinned_root_and_keeps_the_old_one(keys: Keys, folder: Path) -> None:
    v1 = pin_first(folder, root_doc(keys), kid(keys.root[0]), now=NOW)
    second, v2 = rotation(keys, 2)
    _, v3 = rotation(second, 3)
    assert accept_new_roots(folder, [v2, v3], now=NOW).version == 3
    assert load_pinned(folder).document == v3
    assert (folder / "1.root.json").read_bytes() == canonical_json(v1.document)
    assert (folder / "2.root.json").read_bytes() == canonical_json(v2)


def test_a_root_that_is_not_a_rotation_is_refused_and_the_pin_stays(keys: Keys, folder: Path) -> None:
    pin_first(folder, root_doc(keys), kid(keys.root[0]), now=NOW)
    before = (folder / "root.json").read_bytes()
    _, forged = rotation(keys, 2, signers="new only")  # self-signed, as an attacker's root would be
    with pytest.raises(IntegrityFailure, match=r"by the trusted root version 1\): 0 valid signature"):
        accept_new_roots(folder, [forged], now=NOW)
    assert (folder / "root.json").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["root.json"]


@pytest.mark.parametrize("version", [1, 0])
def test_a_root_with_a_lower_or_equal_version_is_refused(keys: Keys, folder: Path, version: int) -> None:
    pin_first(folder, root_doc(keys), kid(keys.root[0]), now=NOW)
    before = (folder / "root.json").read_bytes()
    older = root_doc(keys, version=max(version, 1), expires=NOW + timedelta(days=999))
    older["signed"]["version"] = version  # 0 is not even a version: refused as malformed
    with pytest.raises(IntegrityFailure, match="not newer than the trusted root's version 1|version: 0"):
        accept_new_roots(folder, [older], now=NOW)
    assert (folder / "root.json").read_bytes() == before


def test_nothing_pinned_is_a_clear_not_found(folder: Path) -> None:
    with pytest.raises(NotFound, match="no trust root is pinned here; pin the first one with `airlock trust pin"):
        load_pinned(folder)
