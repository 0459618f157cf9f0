"""Key ceremonies for the trust root: create it, add and revoke keys, rotate root keys, renew it.

Every change writes root version N+1 over `root.json` and keeps N beside it as `N.root.json`, so a
client holding any earlier version can walk the chain. Each new version is signed by the keys
given, then checked with the very function a client uses (`verify_rotation`: the threshold of N's
root role and of N+1's) before anything is written: a ceremony cannot produce a root that an
appliance would refuse.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airlock.errors import IntegrityFailure, InvalidInput, NotFound
from airlock.trust.atomic import write_atomic
from airlock.trust.ed25519 import fingerprint_text, key_id, raw_from_pem
from airlock.trust.keyfiles import Passphrase, load_signing_key, new_key_files, public_raw, signing_key_id
from airlock.trust.pinned import normalize_fingerprint
from airlock.trust.root import (
    ROLES, ROOT_TYPE, Root, canonical_json, pae, parse_root, utc_text, verify_root_self, verify_rotation,
)

__all__ = ["InitResult", "add_key", "init_root", "load_root_file", "load_signing_key", "revoke_key", "rotate",
           "set_expiry", "show", "sign_envelope", "sign_root"]

ROOT_FILE = "root.json"
KEYS_DIR = "keys"
DEMO_WARNING = ("DEMO ROOT, NOT FOR PRODUCTION: one root key alone can replace this root, so whoever copies "
                "that one file controls every appliance that trusts it")


@dataclass(frozen=True)
class InitResult:
    root_path: Path
    key_files: dict[str, list[Path]]  # role -> its private key files
    root: Root
    warning: str | None  # set for a demo root: the CLI prints it


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _check_threshold(threshold: int, count: int, *, demo: bool, what: str) -> None:
    if count < 1:
        raise InvalidInput(f"{what}: at least one key is needed, got {count}")
    if not 1 <= threshold <= count:
        raise InvalidInput(f"{what}: threshold {threshold} of {count} key(s); it must be between 1 and {count}")
    if threshold < 2 and not demo:
        raise InvalidInput(f"{what}: threshold 1 lets one lost or stolen key replace the root; use 2 or more "
                           "(2 of 3 is the default), or --demo for a root that is not for production")


def sign_root(signed: dict, keys: list[Ed25519PrivateKey]) -> dict:
    """A root document: `signed` and one signature per distinct key over its canonical JSON."""
    message = canonical_json(signed)
    unique = {signing_key_id(k): k for k in keys}
    return {"signed": signed, "signatures": [{"keyid": kid, "sig": k.sign(message).hex()}
                                             for kid, k in sorted(unique.items())]}


def _write_root(path: Path, doc: dict, *, exclusive: bool) -> bool:
    # Indented on disk for people reviewing a ceremony; signatures cover the canonical form only.
    text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return write_atomic(path, text.encode("utf-8"), 0o644, exclusive=exclusive)


def init_root(out_dir: Path, *, root_keys: int = 3, threshold: int = 2, expires_days: int = 365,
              demo: bool = False, passphrase: Passphrase, now: datetime | None = None) -> InitResult:
    """A new trust root (version 1) in `out_dir/root.json`, its key files in `out_dir/keys/`."""
    out_dir = Path(out_dir)
    _check_threshold(threshold, root_keys, demo=demo, what="the root role")
    if not 1 <= expires_days <= 3650:
        raise InvalidInput(f"expires in {expires_days} days: expected 1 to 3650")
    root_path = out_dir / ROOT_FILE
    if root_path.exists():
        raise InvalidInput(f"{root_path}: exists; `trust init` makes a new root and never replaces one")
    counts = {"root": root_keys, "bundle": 1, "model": 1}
    files = {role: [out_dir / KEYS_DIR / f"{role}-{i}.key" for i in range(1, n + 1)] for role, n in counts.items()}
    # Keys that never made it into a root are useless: new_key_files removes them if anything fails.
    with new_key_files([path for role in ROLES for path in files[role]], passphrase) as created:
        keys = {role: [created.pop(0) for _ in files[role]] for role in ROLES}
        signed = {"_type": ROOT_TYPE, "version": 1,
                  "expires": utc_text(_now(now) + timedelta(days=expires_days)),
                  "keys": {signing_key_id(k): {"keytype": "ed25519", "public": public_raw(k).hex()}
                           for group in keys.values() for k in group},
                  "roles": {role: {"keyids": [signing_key_id(k) for k in keys[role]],
                                   "threshold": threshold if role == "root" else 1} for role in ROLES}}
        doc = sign_root(signed, keys["root"])
        root = verify_root_self(doc, now=_now(now), source=str(root_path))
        if not _write_root(root_path, doc, exclusive=True):
            raise InvalidInput(f"{root_path}: was created by someone else meanwhile")
    return InitResult(root_path, files, root, DEMO_WARNING if threshold < 2 else None)


def load_root_file(path: Path) -> tuple[Root, dict]:
    try:
        doc = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise NotFound(f"{path}: no trust root here (make one with `airlock trust init`)") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityFailure(f"{path}: the trust root is not JSON: {exc}") from None
    return parse_root(doc, source=str(path)), doc


def _next_version(root_path: Path, change, signing_keys: list[Ed25519PrivateKey], *, now: datetime | None) -> Root:
    """Apply `change` to a copy of version N's signed part, sign it as N+1, verify, then write both files."""
    root_path = Path(root_path)
    current, current_doc = load_root_file(root_path)
    signed = copy.deepcopy(current_doc["signed"])
    change(signed)
    signed["version"] = current.version + 1
    # Keys no role names any more leave the root with their last role.
    used = {kid for role in signed["roles"].values() for kid in role["keyids"]}
    signed["keys"] = {kid: key for kid, key in signed["keys"].items() if kid in used}
    allowed = set(current.roles["root"].keyids) | set(signed["roles"]["root"]["keyids"])
    strangers = sorted(signing_key_id(k) for k in signing_keys if signing_key_id(k) not in allowed)
    if strangers:
        raise InvalidInput(f"signing key(s) {', '.join(strangers)} are root keys of neither version "
                           f"{current.version} nor {current.version + 1} of {root_path}")
    doc = sign_root(signed, signing_keys)
    new = verify_rotation(current, doc, now=_now(now), source=f"{root_path} version {current.version + 1}")
    kept = root_path.with_name(f"{current.version}.root.json")
    if not _write_root(kept, current_doc, exclusive=True) and load_root_file(kept)[1] != current_doc:
        raise IntegrityFailure(f"{kept}: holds another version {current.version} than {root_path}; "
                               "two histories of one root must not exist: find out which one was published")
    _write_root(root_path, doc, exclusive=False)
    return new


def _role(signed: dict, role: str) -> dict:
    if role not in ROLES:
        raise InvalidInput(f"role {role!r}: expected one of {', '.join(ROLES)}")
    return signed["roles"][role]


def add_key(root_path: Path, role: str, public_key_pem: bytes, signing_keys: list[Ed25519PrivateKey], *,
            now: datetime | None = None) -> Root:
    """Root N+1 with one more key in `role` (the threshold stays)."""
    raw = raw_from_pem(public_key_pem, source="the key to add")
    kid = key_id(raw)

    def change(signed: dict) -> None:
        keyids = _role(signed, role)["keyids"]
        if kid in keyids:
            raise InvalidInput(f"key {kid} is in role {role} already")
        keyids.append(kid)
        signed["keys"][kid] = {"keytype": "ed25519", "public": raw.hex()}

    return _next_version(root_path, change, signing_keys, now=now)


def revoke_key(root_path: Path, role: str, keyid: str, signing_keys: list[Ed25519PrivateKey], *,
               now: datetime | None = None) -> Root:
    """Root N+1 without `keyid` in `role`; refused when fewer keys than the threshold would remain."""
    kid = normalize_fingerprint(keyid)

    def change(signed: dict) -> None:
        entry = _role(signed, role)
        if kid not in entry["keyids"]:
            raise InvalidInput(f"key {keyid} is not in role {role}; its keys are {', '.join(entry['keyids'])}")
        if len(entry["keyids"]) - 1 < entry["threshold"]:
            raise InvalidInput(f"revoking {kid} would leave role {role} {len(entry['keyids']) - 1} key(s) for a "
                               f"threshold of {entry['threshold']}: add a key first (`trust add-key`)"
                               + (", or rotate to a lower threshold" if role == "root" else ""))
        entry["keyids"].remove(kid)

    return _next_version(root_path, change, signing_keys, now=now)


def rotate(root_path: Path, new_root_keys: list[bytes], threshold: int,
           signing_keys_old: list[Ed25519PrivateKey], signing_keys_new: list[Ed25519PrivateKey], *,
           demo: bool = False, now: datetime | None = None) -> Root:
    """Root N+1 whose root role is `new_root_keys` (raw public keys) with `threshold`."""
    unique = {key_id(raw): raw for raw in new_root_keys}
    _check_threshold(threshold, len(unique), demo=demo, what="the new root role")

    def change(signed: dict) -> None:
        for kid, raw in unique.items():
            signed["keys"][kid] = {"keytype": "ed25519", "public": raw.hex()}
        signed["roles"]["root"] = {"keyids": list(unique), "threshold": threshold}

    return _next_version(root_path, change, [*signing_keys_old, *signing_keys_new], now=now)


def set_expiry(root_path: Path, expires: datetime, signing_keys: list[Ed25519PrivateKey], *,
               now: datetime | None = None) -> Root:
    """Root N+1 that expires at `expires` (renewal; also the way out of an expired root)."""
    if expires <= _now(now):
        raise InvalidInput(f"expiry {utc_text(expires)} is not in the future")

    def change(signed: dict) -> None:
        signed["expires"] = utc_text(expires)

    return _next_version(root_path, change, signing_keys, now=now)


def sign_envelope(payload: bytes, payload_type: str, keys: list[Ed25519PrivateKey]) -> dict:
    """A DSSE envelope over `payload`, one signature per distinct key (keyid = sha256 of the public key)."""
    message = pae(payload_type, payload)
    unique = {signing_key_id(k): k for k in keys}
    return {"payloadType": payload_type, "payload": base64.b64encode(payload).decode("ascii"),
            "signatures": [{"keyid": kid, "sig": base64.b64encode(k.sign(message)).decode("ascii")}
                           for kid, k in sorted(unique.items())]}


def show(root: Root, *, now: datetime | None = None) -> str:
    """Version, expiry and every role's threshold and key fingerprints, for reading aloud."""
    days = (root.expires - _now(now)).days
    state = f"EXPIRED {-days} day(s) ago" if root.expires <= _now(now) else f"in {days} day(s)"
    lines = [f"trust root version {root.version}, expires {utc_text(root.expires)} ({state})"]
    for name in ROLES:
        role = root.roles[name]
        lines.append(f"role {name}: {role.threshold} of {len(role.keyids)} key(s) must sign")
        lines += [f"  {fingerprint_text(root.keys[kid])}" for kid in role.keyids]
    return "\n".join(lines) + "\n"

