"""Verifying a carried bundle before a byte of it is unpacked or run, then unpacking it safely.

The order is the point: the envelope against the trust root (role `bundle`, its threshold, root
and manifest not expired, sequence not below the installed one), the files beside the parts, each
part's size and sha256, the target against this host, the free space; only then the streamed,
hashed, safe extraction into a private directory that moves into place at the end.

Standard library only: this module is also the stand-alone verifier's engine (see verifier.py),
which a first install runs with a bare `python3` before any airlock is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from airlock.bundle import manifest as bundle_manifest
from airlock.bundle.extract import extract_verified
from airlock.bundle.parts import open_payload, verify_parts
from airlock.bundle.target import check_free_space, check_target, host_target
from airlock.errors import IntegrityFailure, NotFound
from airlock.trust.pinned import check_fingerprints
from airlock.trust.root import Root, parse_root, update_chain, verify_envelope, verify_root_self

ROOTS_DIR = "roots"  # earlier root versions, N.root.json, so a pinned root can walk up to the bundle's


@dataclass(frozen=True)
class Verified:
    manifest: dict
    root: Root  # the root that verified the bundle: the pinned one, or its rotation carried in the bundle
    chain: list[dict]  # root documents after the pinned one, in order (a first install: none)


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise NotFound(f"{path}: {what} is missing") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityFailure(f"{path}: {what} is not JSON: {exc}") from None


def bundle_root(bundle_dir: Path, *, pinned: Root | None, fingerprint: str | None,
                now: datetime) -> tuple[Root, list[dict]]:
    """The root to verify the bundle with, and the root documents it rotated through to get there.

    A first install (nothing pinned) takes the bundle's own root.json, self-signed by its root
    threshold, only when the fingerprint the operator got out of band is one of its root keys. An
    installed appliance keeps its pinned root, or moves to the bundle's newer root only through
    rotation: each version N+1 signed by the threshold of N and of N+1.
    """
    path = bundle_dir / bundle_manifest.ROOT_NAME
    doc = read_json(path, "the bundle's trust root")
    if pinned is None:
        if not fingerprint:
            raise IntegrityFailure(
                "no trust root is pinned here: give the root key fingerprint you received out of band "
                "(--fingerprint), compared by you, never read from the bundle itself")
        root = verify_root_self(doc, now=now, source=str(path))
        check_fingerprints(root, fingerprint, source=str(path))
        return root, []
    candidate = parse_root(doc, source=str(path))
    if candidate.version <= pinned.version:
        return pinned, []
    chain = [read_json(bundle_dir / ROOTS_DIR / f"{v}.root.json", f"root version {v}")
             for v in range(pinned.version + 1, candidate.version)] + [doc]
    return update_chain(pinned, chain, now=now), chain


def check_outside(bundle_dir: Path, manifest: dict) -> None:
    """The files beside the parts (verifier, installer, root) as the signed manifest names them."""
    for name, entry in manifest["outside"].items():
        path = bundle_dir / name
        if not path.is_file():
            raise IntegrityFailure(f"{path}: listed by the signed manifest beside the parts, but missing")
        with path.open("rb") as f:
            size, digest = os.fstat(f.fileno()).st_size, hashlib.file_digest(f, "sha256").hexdigest()
        if size != entry["size"] or digest != entry["sha256"]:
            raise IntegrityFailure(f"{path}: {size} bytes, sha256 {digest}; the signed manifest says "
                                   f"{entry['size']} bytes, sha256 {entry['sha256']}")


def verify_bundle(bundle_dir: Path | str, *, now: datetime, pinned: Root | None = None,
                  fingerprint: str | None = None, installed_sequence: int | None = None,
                  host: dict | None = None, space_at: Path | None = None,
                  kind: str = bundle_manifest.KIND) -> Verified:
    """Everything checked, in order, before anything is unpacked; raises on the first failure.

    `kind` is what the caller installs (a release or a models bundle); `installed_sequence` is the
    highest of that kind installed here."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise NotFound(f"{bundle_dir}: no bundle directory here")
    root, chain = bundle_root(bundle_dir, pinned=pinned, fingerprint=fingerprint, now=now)
    envelope_path = bundle_dir / bundle_manifest.ENVELOPE_NAME
    envelope = read_json(envelope_path, "the manifest's signature envelope")
    payload = verify_envelope(envelope, root, "bundle", payload_type=bundle_manifest.PAYLOAD_TYPE, now=now)
    shipped = bundle_dir / bundle_manifest.MANIFEST_NAME
    if shipped.exists() and shipped.read_bytes() != payload:
        raise IntegrityFailure(f"{shipped}: differs from the manifest signed in {envelope_path.name}; "
                               "the readable copy was edited (the signed one is what counts)")
    manifest = bundle_manifest.parse(payload, source=str(envelope_path))
    bundle_manifest.check_kind(manifest, kind, source=str(bundle_dir))
    bundle_manifest.check_fresh(manifest, now=now, installed_sequence=installed_sequence, source=str(envelope_path))
    check_outside(bundle_dir, manifest)
    verify_parts(bundle_dir, manifest["parts"])
    if kind == bundle_manifest.KIND:  # a models bundle's files are data, the same on every host
        check_target(manifest["target"], host if host is not None else host_target())
    if space_at is not None:
        check_free_space(space_at, bundle_manifest.payload_size(manifest), what="the unpacked bundle")
    return Verified(manifest, root, chain)


def unpack(bundle_dir: Path | str, verified: Verified, dest: Path | str) -> Path:
    """Stream the verified parts through the safe extractor into `dest` (which must not exist)."""
    dest = Path(dest)
    with open_payload(Path(bundle_dir), verified.manifest["parts"]) as payload:
        extract_verified(payload, verified.manifest["files"], dest)
    return dest
