"""The trust root, TUF-style: which keys may sign for which role, how many must, until when.

    {"signed": {"_type": "airlock.root/v1", "version": N, "expires": "2027-11-23T00:00:00Z",
                "keys": {KEYID: {"keytype": "ed25519", "public": HEX}},
                "roles": {"root": {"keyids": [...], "threshold": 2}, "bundle": {...}, "model": {...}}},
     "signatures": [{"keyid": KEYID, "sig": HEX}]}

Signatures cover the canonical JSON of "signed". A first root must carry its own root role's
threshold; root N+1 is accepted only when signed by the threshold of N's root role and of its
own, with version exactly N+1, and not expired (an expired root is a freeze attack). Envelopes
(DSSE) are accepted for a role when at least its threshold of distinct keys of that role signed.

Standard library only (see ed25519.py): the stand-alone bundle verifier imports this.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airlock.errors import IntegrityFailure
from airlock.trust.ed25519 import key_id, verify

ROOT_TYPE = "airlock.root/v1"
ROLES = ("root", "bundle", "model")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # RFC 3339, UTC, to the second: the one time format of a root


def canonical_json(obj: Any) -> bytes:
    """One byte sequence per value: sorted keys, no spaces, UTF-8, no NaN or Infinity."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: lengths are byte counts, in ASCII decimal."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class Role:
    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class Root:
    version: int
    expires: datetime
    keys: dict[str, bytes]
    roles: dict[str, Role]
    document: dict


def utc_text(when: datetime) -> str:
    return when.astimezone(UTC).strftime(TIME_FORMAT)


def parse_utc(value: Any) -> datetime | None:
    try:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return None


def _keys(keys: Any, problems: list[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if not isinstance(keys, dict) or not keys:
        problems.append("signed.keys: expected an object of key id to key")
        return out
    for kid, key in keys.items():
        if not HEX64.match(kid):
            problems.append(f"signed.keys[{kid}]: a key id is the sha256 of the key, 64 lowercase hex digits")
            continue
        if not isinstance(key, dict) or set(key) != {"keytype", "public"} or key.get("keytype") != "ed25519":
            problems.append(f"signed.keys[{kid}]: expected {{keytype: ed25519, public: HEX}}")
            continue
        try:
            raw = bytes.fromhex(key["public"])
        except (TypeError, ValueError):
            raw = b""
        if len(raw) != 32:
            problems.append(f"signed.keys[{kid}].public: not 32 bytes of hex")
        elif key_id(raw) != kid:
            problems.append(f"signed.keys[{kid}]: the id is not the sha256 of its public key")
        else:
            out[kid] = raw
    return out


def _roles(roles: Any, keys: dict[str, bytes], problems: list[str]) -> dict[str, Role]:
    out: dict[str, Role] = {}
    if not isinstance(roles, dict):
        problems.append(f"signed.roles: expected an object with the roles {', '.join(ROLES)}")
        return out
    missing, unknown_roles = [r for r in ROLES if r not in roles], sorted(set(roles) - set(ROLES))
    if missing:
        problems.append(f"signed.roles: role(s) {', '.join(missing)} missing")
    if unknown_roles:
        problems.append(f"signed.roles: unknown role(s) {', '.join(unknown_roles)}; the roles are {', '.join(ROLES)}")
    for name in (r for r in ROLES if r in roles):
        role = roles[name]
        if not isinstance(role, dict) or set(role) != {"keyids", "threshold"}:
            problems.append(f"signed.roles.{name}: expected exactly {{keyids, threshold}}")
            continue
        ids, threshold = role["keyids"], role["threshold"]
        if not isinstance(ids, list) or not ids or len(set(ids)) != len(ids):
            problems.append(f"signed.roles.{name}.keyids: expected a non-empty list of distinct key ids")
            continue
        unknown = [k for k in ids if k not in keys]
        if unknown:
            problems.append(f"signed.roles.{name}: key id(s) {', '.join(map(str, unknown))} not in signed.keys")
        if not isinstance(threshold, int) or isinstance(threshold, bool) or not 1 <= threshold <= len(ids):
            problems.append(f"signed.roles.{name}.threshold: {threshold!r} is not between 1 and {len(ids)}")
            continue
        out[name] = Role(tuple(ids), threshold)
    return out


def parse_root(doc: Any, *, source: str) -> Root:
    """A root document's shape, every problem listed; signatures are checked separately."""
    problems: list[str] = []
    if not isinstance(doc, dict) or set(doc) != {"signed", "signatures"} or not isinstance(doc["signed"], dict):
        raise IntegrityFailure(f"{source}: a root is {{signed, signatures}}")
    signed = doc["signed"]
    if set(signed) != {"_type", "version", "expires", "keys", "roles"}:
        problems.append(f"signed: fields {', '.join(sorted(signed))}; expected exactly _type, expires, keys, "
                        "roles, version")
    if signed.get("_type") != ROOT_TYPE:
        problems.append(f"signed._type: {signed.get('_type')!r}, expected {ROOT_TYPE!r}")
    version = signed.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        problems.append(f"signed.version: {version!r} is not a positive integer")
    expires = parse_utc(signed.get("expires"))
    if expires is None:
        problems.append(f"signed.expires: {signed.get('expires')!r} is not a UTC time like 2027-11-23T00:00:00Z")
    keys = _keys(signed.get("keys"), problems)
    roles = _roles(signed.get("roles"), keys, problems)
    if not isinstance(doc["signatures"], list):
        problems.append("signatures: expected a list")
    else:
        for i, sig in enumerate(doc["signatures"]):
            if not isinstance(sig, dict) or set(sig) != {"keyid", "sig"} or not all(
                    isinstance(v, str) for v in sig.values()):
                problems.append(f"signatures[{i}]: expected exactly {{keyid, sig}}, both strings")
    if problems:
        raise IntegrityFailure(f"{source}: the trust root is malformed", problems=problems)
    return Root(version, expires, keys, roles, doc)


def _count(root: Root, role: str, signatures: list, message: bytes, decode) -> tuple[set[str], list[str]]:
    """The distinct keys of `role` whose signature over `message` verifies, and why the others did not."""
    good: set[str] = set()
    failed: list[str] = []
    notes: list[str] = []
    for sig in signatures:
        kid = sig.get("keyid") if isinstance(sig, dict) else None
        if kid not in root.keys:
            notes.append(f"key {kid} is not in the root")
        elif kid not in root.roles[role].keyids:
            owners = [name for name, r in sorted(root.roles.items()) if kid in r.keyids]
            notes.append(f"key {kid} is not a key of role {role} (role {', '.join(owners) or 'none'})")
        elif kid not in good:  # a key that signs twice still counts once
            raw = decode(sig.get("sig"))
            if raw is not None and verify(root.keys[kid], raw, message):
                good.add(kid)
            else:
                failed.append(kid)
    notes += [f"the signature of key {kid} does not verify" for kid in dict.fromkeys(failed) if kid not in good]
    return good, notes


def _hex(value: Any) -> bytes | None:
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        return None


def _b64(value: Any) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except (TypeError, ValueError, binascii.Error):
        return None


def _require(root: Root, role: str, signatures: Any, message: bytes, decode, what: str) -> None:
    if not isinstance(signatures, list):
        raise IntegrityFailure(f"{what}: signatures is not a list")
    good, notes = _count(root, role, signatures, message, decode)
    needed = root.roles[role].threshold
    if len(good) < needed:
        raise IntegrityFailure(f"{what}: {len(good)} valid signature(s) of role {role}, {needed} needed"
                               + (f" ({'; '.join(notes)})" if notes else ""))


def _not_expired(root: Root, now: datetime, source: str) -> None:
    if root.expires <= now:
        raise IntegrityFailure(f"{source}: the trust root (version {root.version}) expired at "
                               f"{root.document['signed']['expires']}; a renewed root must be signed and carried")


def verify_root_self(doc: Any, *, now: datetime, source: str) -> Root:
    """A first root: well formed, not expired, signed by its own root role's threshold."""
    root = parse_root(doc, source=source)
    _require(root, "root", doc["signatures"], canonical_json(doc["signed"]), _hex, source)
    _not_expired(root, now, source)
    return root


def verify_rotation(trusted: Root, doc: Any, *, now: datetime, source: str) -> Root:
    """Root N+1, accepted only with version N+1 and the root thresholds of both N and N+1."""
    new = parse_root(doc, source=source)
    if new.version <= trusted.version:
        raise IntegrityFailure(f"{source}: version {new.version} is not newer than the trusted root's version "
                               f"{trusted.version}; a root is only ever replaced by the next version")
    if new.version != trusted.version + 1:
        raise IntegrityFailure(f"{source}: version {new.version} cannot follow the trusted root's "
                               f"version {trusted.version}: only {trusted.version + 1} can (carry every "
                               "version in between)")
    message = canonical_json(doc["signed"])
    _require(trusted, "root", doc["signatures"], message, _hex, f"{source} (by the trusted root version "
             f"{trusted.version})")
    _require(new, "root", doc["signatures"], message, _hex, f"{source} (by its own root keys)")
    _not_expired(new, now, source)
    return new


def update_chain(trusted: Root, docs: list, *, now: datetime, source: str = "new root") -> Root:
    """Walk from `trusted` through `docs` in order, each a rotation of the one before; the last wins."""
    for i, doc in enumerate(docs, 1):
        trusted = verify_rotation(trusted, doc, now=now, source=f"{source} {i} of {len(docs)}")
    return trusted


def verify_envelope(envelope: Any, root: Root, role: str, *, payload_type: str, now: datetime) -> bytes:
    """The payload of a DSSE envelope signed by at least `role`'s threshold under an unexpired root."""
    what = f"envelope ({payload_type})"
    if not isinstance(envelope, dict) or set(envelope) != {"payloadType", "payload", "signatures"}:
        raise IntegrityFailure(f"{what}: expected exactly payloadType, payload and signatures")
    if envelope["payloadType"] != payload_type:
        raise IntegrityFailure(f"{what}: payloadType {envelope['payloadType']!r}, expected {payload_type!r}")
    payload = _b64(envelope["payload"])
    if payload is None:
        raise IntegrityFailure(f"{what}: payload is not base64")
    _not_expired(root, now, "the trust root")
    _require(root, role, envelope["signatures"], pae(payload_type, payload), _b64, what)
    return payload
