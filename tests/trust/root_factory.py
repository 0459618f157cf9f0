"""Real Ed25519 keys and real signed trust roots for the trust tests, built in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airlock.trust.ceremony import sign_root
from airlock.trust.keyfiles import public_raw, signing_key_id as kid
from airlock.trust.root import ROOT_TYPE, utc_text

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def new_keys(n: int) -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.generate() for _ in range(n)]


@dataclass
class Keys:
    root: list[Ed25519PrivateKey] = field(default_factory=lambda: new_keys(3))
    bundle: list[Ed25519PrivateKey] = field(default_factory=lambda: new_keys(2))
    model: list[Ed25519PrivateKey] = field(default_factory=lambda: new_keys(1))


def signed_part(keys: Keys, *, version: int = 1, expires: datetime | None = None,
                thresholds: tuple[int, int, int] = (2, 1, 1)) -> dict:
    groups = {"root": keys.root, "bundle": keys.bundle, "model": keys.model}
    every = {kid(k): k for group in groups.values() for k in group}
    return {"_type": ROOT_TYPE, "version": version, "expires": utc_text(expires or NOW + timedelta(days=365)),
            "keys": {i: {"keytype": "ed25519", "public": public_raw(k).hex()} for i, k in every.items()},
            "roles": {name: {"keyids": [kid(k) for k in group], "threshold": t}
                      for (name, group), t in zip(groups.items(), thresholds)}}


def root_doc(keys: Keys, *, signers: list[Ed25519PrivateKey] | None = None, **signed_kw) -> dict:
    """A root signed by `signers` (default: the first two root keys, meeting 2 of 3)."""
    return sign_root(signed_part(keys, **signed_kw), keys.root[:2] if signers is None else signers)
