"""Trust: the appliance's signing key and signed manifests (DSSE envelopes, Ed25519)."""

from airlock.trust.keys import appliance_public_key, ensure_appliance_key, public_key_id
from airlock.trust.manifest import (
    PAYLOAD_TYPE,
    build_manifest,
    canonical_json,
    pae,
    sign_manifest,
    verify_directory,
    verify_envelope,
    verify_files,
)

__all__ = [
    "PAYLOAD_TYPE", "appliance_public_key", "build_manifest", "canonical_json", "ensure_appliance_key",
    "pae", "public_key_id", "sign_manifest", "verify_directory", "verify_envelope", "verify_files",
]
