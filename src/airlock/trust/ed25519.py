"""Ed25519 signature checks with whatever the host has: the `cryptography` package, else `openssl`.

The stand-alone bundle verifier runs with a bare `python3` that may lack `cryptography`, so this
module imports only the standard library and falls back to OpenSSL 3's command line. Key ids are
the sha256 of the raw 32-byte public key: also the fingerprint an operator compares out of band.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from airlock.errors import IntegrityFailure

# DER of an Ed25519 SubjectPublicKeyInfo before its 32 raw key bytes (RFC 8410).
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
BACKEND_ENV = "AIRLOCK_ED25519_BACKEND"


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


def fingerprint_text(public_raw: bytes) -> str:
    """The key id in groups of four, for reading aloud."""
    kid = key_id(public_raw)
    return " ".join(kid[i:i + 4] for i in range(0, len(kid), 4))


def public_pem(public_raw: bytes) -> bytes:
    body = base64.encodebytes(SPKI_PREFIX + public_raw).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{body}-----END PUBLIC KEY-----\n".encode()


def raw_from_pem(pem: bytes, *, source: str = "public key") -> bytes:
    lines = [ln for ln in pem.decode("ascii", "replace").strip().splitlines() if not ln.startswith("-----")]
    try:
        der = base64.b64decode("".join(lines), validate=True)
    except ValueError:
        raise IntegrityFailure(f"{source}: not a PEM public key") from None
    if len(der) != 44 or not der.startswith(SPKI_PREFIX):
        raise IntegrityFailure(f"{source}: not an Ed25519 public key")
    return der[len(SPKI_PREFIX):]


def _with_cryptography(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


def _with_openssl(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise IntegrityFailure("cannot check Ed25519 signatures: neither the Python package `cryptography` "
                               "nor the `openssl` command is available on this host")
    # A private directory (0700): no other local user can swap the key or the message under openssl.
    with tempfile.TemporaryDirectory(prefix="airlock-ed25519-") as tmp:
        key, msg, sig = (Path(tmp) / n for n in ("key.pem", "msg", "sig"))
        key.write_bytes(public_pem(public_raw))
        msg.write_bytes(message)
        sig.write_bytes(signature)
        done = subprocess.run([openssl, "pkeyutl", "-verify", "-pubin", "-inkey", str(key), "-rawin",
                               "-in", str(msg), "-sigfile", str(sig)], capture_output=True, timeout=60)
    if done.returncode == 0:
        return True
    if b"Signature Verification Failure" in done.stdout + done.stderr:
        return False
    # Anything else (OpenSSL 1.1 has no -rawin, a broken install) must not pass for a bad signature.
    detail = (done.stderr or done.stdout).decode("utf-8", "replace").strip()[-500:]
    raise IntegrityFailure(f"`{openssl} pkeyutl -verify` cannot check Ed25519 signatures (OpenSSL 3 is "
                           f"needed; exit {done.returncode}): {detail}")


def _has_cryptography() -> bool:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return False
    return True


def backend() -> str:
    """`cryptography` when it imports, else `openssl`; AIRLOCK_ED25519_BACKEND forces one."""
    chosen = os.environ.get(BACKEND_ENV, "")
    if chosen == "openssl":
        return chosen
    if chosen == "cryptography":
        if not _has_cryptography():
            raise IntegrityFailure(f"{BACKEND_ENV}=cryptography, but the Python package `cryptography` "
                                   "does not import here; unset it to use `openssl`")
        return chosen
    if chosen:
        raise IntegrityFailure(f"{BACKEND_ENV}={chosen!r}: expected `openssl` or `cryptography`")
    return "cryptography" if _has_cryptography() else "openssl"


def verify(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is the Ed25519 signature of `message` by `public_raw`."""
    if len(public_raw) != 32 or len(signature) != 64:
        return False
    check = _with_openssl if backend() == "openssl" else _with_cryptography
    return check(public_raw, signature, message)
