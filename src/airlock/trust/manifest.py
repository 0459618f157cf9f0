"""Signed manifests of candidate adapters, in a DSSE envelope signed with Ed25519.

The manifest names every file of an adapter by sha256 and size, plus what it was made from (base
model, dataset, training config) and how it scored. It travels as canonical JSON inside a DSSE
envelope; the signature covers the DSSE pre-authentication encoding (PAE) of the payload type and
the payload bytes, so neither the bytes nor their declared type can be swapped undetected.
Readers verify the envelope first and only then look at the manifest inside.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from airlock.errors import IntegrityFailure, InvalidInput, NotFound
from airlock.meta.db import now
from airlock.store.base import DIGEST_RE, sha256_file
from airlock.trust.keys import public_key_id
from airlock.trust.root import canonical_json, pae

PAYLOAD_TYPE = "application/vnd.airlock.manifest+json"
MANIFEST_KIND = "airlock.manifest/v1"
REQUIRED_FIELDS = ("kind", "model_id", "base_model", "dataset_digest", "files", "training_config",
                   "eval_results")


def _b64decode(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise IntegrityFailure(f"envelope {what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        # DSSE allows either alphabet; strict URL-safe decoding as the second choice.
        return base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityFailure(f"envelope {what} is not valid base64") from None


def _safe_relpath(rel: Any) -> bool:
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and all(part not in ("", ".", "..") for part in rel.split("/"))


def _check_files(files: Any, problems: list[str]) -> dict[str, dict]:
    if not isinstance(files, dict) or not files:
        problems.append("files: expected a non-empty mapping of relative path to {sha256, size}")
        return {}
    out = {}
    for rel, entry in sorted(files.items(), key=lambda kv: str(kv[0])):
        if not _safe_relpath(rel):
            problems.append(f"files: {rel!r} is not a safe relative path")
            continue
        if not isinstance(entry, dict):
            problems.append(f"files[{rel!r}]: expected an object with sha256 and size")
            continue
        digest, size = entry.get("sha256"), entry.get("size")
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            problems.append(f"files[{rel!r}].sha256: {digest!r} is not 'sha256:' and 64 hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            problems.append(f"files[{rel!r}].size: {size!r} is not a byte count")
        out[rel] = {"sha256": digest, "size": size}
    return out


def build_manifest(
    model_id: str,
    files: dict[str, dict],
    base_model: dict,
    dataset_digest: str,
    training_config: dict,
    eval_results: dict,
    extra: dict | None = None,
    *,
    created_at: str | None = None,
) -> dict:
    """The manifest of a candidate adapter; every malformed field is reported at once."""
    problems: list[str] = []
    if not isinstance(model_id, str) or not model_id.strip():
        problems.append(f"model_id: {model_id!r} is not a non-empty string")
    checked_files = _check_files(files, problems)
    if not isinstance(base_model, dict):
        problems.append("base_model: expected an object with name and digest")
        base_model = {}
    if not isinstance(base_model.get("name"), str) or not base_model.get("name"):
        problems.append(f"base_model.name: {base_model.get('name')!r} is not a non-empty string")
    if not isinstance(base_model.get("digest"), str) or not DIGEST_RE.match(base_model["digest"]):
        problems.append(f"base_model.digest: {base_model.get('digest')!r} is not a sha256 digest")
    if not isinstance(dataset_digest, str) or not DIGEST_RE.match(dataset_digest):
        problems.append(f"dataset_digest: {dataset_digest!r} is not a sha256 digest")
    for field, value in (("training_config", training_config), ("eval_results", eval_results)):
        if not isinstance(value, dict):
            problems.append(f"{field}: expected an object, got {type(value).__name__}")
    if extra is not None and not isinstance(extra, dict):
        problems.append(f"extra: expected an object, got {type(extra).__name__}")
    if problems:
        raise InvalidInput("cannot build the manifest", problems=problems)

    manifest = {
        "kind": MANIFEST_KIND,
        "model_id": model_id,
        "created_at": created_at or now(),
        "base_model": {"name": base_model["name"], "digest": base_model["digest"]},
        "dataset_digest": dataset_digest,
        "files": checked_files,
        "training_config": training_config,
        "eval_results": eval_results,
        # Kept under its own key so nothing a caller adds can shadow a signed core field.
        "extra": dict(extra or {}),
    }
    try:
        canonical_json(manifest)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"cannot build the manifest: not representable as JSON: {exc}") from None
    return manifest


def sign_payload(payload_type: str, payload: bytes, private_key: Ed25519PrivateKey) -> dict:
    """A DSSE envelope of `payload`, signed by `private_key` over the PAE of type and bytes: the one
    way the appliance signs what it vouches for (manifests, promotion records, exports)."""
    signature = private_key.sign(pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": public_key_id(private_key),
                        "sig": base64.b64encode(signature).decode("ascii")}],
    }


def sign_manifest(manifest: dict, private_key: Ed25519PrivateKey) -> dict:
    """A DSSE envelope holding the canonical manifest, signed by `private_key`."""
    return sign_payload(PAYLOAD_TYPE, canonical_json(manifest), private_key)


def verify_envelope(envelope: Any, public_key: Ed25519PublicKey) -> dict:
    """The manifest inside `envelope` once a signature by `public_key` checks; else IntegrityFailure."""
    return _parse_manifest(open_envelope(envelope, PAYLOAD_TYPE, public_key))


def open_envelope(envelope: Any, payload_type: str, public_key: Ed25519PublicKey) -> bytes:
    """The payload bytes of a DSSE envelope of `payload_type` once a signature by `public_key`
    checks; IntegrityFailure otherwise."""
    if not isinstance(envelope, dict):
        raise IntegrityFailure("envelope is not a JSON object")
    if envelope.get("payloadType") != payload_type:
        raise IntegrityFailure(f"envelope payloadType is {envelope.get('payloadType')!r}, "
                               f"expected {payload_type!r}")
    payload = _b64decode(envelope.get("payload"), "payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures or not all(isinstance(s, dict) for s in signatures):
        raise IntegrityFailure("envelope has no signatures")

    keyid = public_key_id(public_key)
    # keyid is an unauthenticated hint: it picks which signatures to try, it proves nothing.
    candidates = [s for s in signatures if s.get("keyid") in (keyid, None, "")]
    if not candidates:
        signed_by = ", ".join(sorted(str(s.get("keyid")) for s in signatures))
        raise IntegrityFailure(f"envelope is not signed by key {keyid} (signed by: {signed_by})")
    message = pae(payload_type, payload)
    for entry in candidates:
        try:
            public_key.verify(_b64decode(entry.get("sig"), "signature"), message)
            break
        except (InvalidSignature, IntegrityFailure):
            continue
    else:
        raise IntegrityFailure(f"signature by key {keyid} does not match the payload: "
                               "the signed content or its signature was changed after signing")
    return payload


def _parse_manifest(payload: bytes) -> dict:
    try:
        manifest = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityFailure(f"signed payload is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise IntegrityFailure(f"signed payload is not an {MANIFEST_KIND} manifest")
    missing = [f for f in REQUIRED_FIELDS if f not in manifest]
    if missing:
        raise IntegrityFailure(f"signed manifest lacks {', '.join(missing)}")
    return manifest


ReadDigest = Callable[[str], tuple[str, int]]


def verify_files(manifest: dict, read_digest: ReadDigest, *, present: Iterable[str] | None = None) -> None:
    """Check every file the manifest names; raise one IntegrityFailure listing every mismatch.

    `read_digest(relpath)` returns `(sha256, size)` of the file as it is now and raises
    FileNotFoundError or NotFound when it is gone. `present`, when given, lists the files that
    are actually there, so that a file added next to the signed ones is reported too.
    """
    problems: list[str] = []
    files = manifest.get("files") or {}
    for rel, entry in sorted(files.items()):
        try:
            digest, size = read_digest(rel)
        except (FileNotFoundError, NotFound):
            problems.append(f"{rel}: missing")
            continue
        if digest != entry.get("sha256"):
            problems.append(f"{rel}: sha256 is {digest}, the manifest says {entry.get('sha256')}")
        if size != entry.get("size"):
            problems.append(f"{rel}: {size} bytes, the manifest says {entry.get('size')}")
    for rel in sorted(set(present or ()) - set(files)):
        problems.append(f"{rel}: not in the signed manifest")
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise IntegrityFailure(f"files do not match the signed manifest of {manifest.get('model_id')}: "
                               f"{len(problems)} {noun}", problems=problems)


def directory_reader(root: Path | str) -> ReadDigest:
    """A `read_digest` over files under `root`; a path that escapes `root` counts as missing."""
    root = Path(root)

    def read(rel: str) -> tuple[str, int]:
        path = root / rel
        if not _safe_relpath(rel) or not path.is_file() or path.is_symlink():
            raise FileNotFoundError(rel)
        return sha256_file(path), path.stat().st_size

    return read


def verify_directory(manifest: dict, root: Path | str) -> None:
    """Every signed file present and unchanged under `root`, and no unsigned file beside them."""
    root = Path(root)
    present = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()]
    verify_files(manifest, directory_reader(root), present=present)
