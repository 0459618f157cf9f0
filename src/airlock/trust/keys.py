"""The appliance's own Ed25519 signing key: created once at first start, guarded on every load.

The private key is PEM (PKCS#8) in `<keys_dir>/appliance.key`, mode 0600; the public key sits
beside it in `appliance.pub` for anyone who needs to verify. A private key file that group or
others can read is refused rather than repaired: someone may already have copied it, and a
signature made with a possibly leaked key proves nothing.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from airlock.errors import IntegrityFailure

PRIVATE_NAME = "appliance.key"
PUBLIC_NAME = "appliance.pub"


def public_key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """A short, stable id for a key: the first 16 hex digits of sha256 over the raw public key."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(data: bytes, *, source: str = "public key") -> Ed25519PublicKey:
    """An Ed25519 public key from PEM bytes; anything else is an IntegrityFailure."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise IntegrityFailure(f"{source} is not a readable PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise IntegrityFailure(f"{source} is a {type(key).__name__}, not an Ed25519 public key")
    return key


def _write_atomic(path: Path, data: bytes, mode: int, *, exclusive: bool) -> bool:
    """Write `data` to `path` in one step; with `exclusive`, never replace an existing file.

    Returns False when `exclusive` and the file already existed (another process won the race).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # mkstemp creates 0600 already; fchmod makes the mode independent of the umask.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            # link() fails if the name exists, so two first starts cannot each keep their own key.
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            # Some filesystems have no hard links; a rename is still atomic, only not exclusive.
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_private_file(path: Path) -> None:
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise IntegrityFailure(f"appliance key {path} is not a regular file")
    if st.st_mode & 0o077:
        raise IntegrityFailure(
            f"appliance key {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others may read it; "
            "the key is refused. If nobody else could have read it, restrict it with "
            f"'chmod 600 {path}', otherwise rotate the key"
        )
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise IntegrityFailure(f"appliance key {path} belongs to uid {st.st_uid}, not to this user")


def _load_private(path: Path) -> Ed25519PrivateKey:
    _check_private_file(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IntegrityFailure(f"appliance key {path} is not a readable PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IntegrityFailure(f"appliance key {path} is a {type(key).__name__}, not an Ed25519 key")
    return key


def _sync_public(keys_dir: Path, key: Ed25519PrivateKey) -> None:
    """Write appliance.pub when missing; refuse one that belongs to a different private key."""
    pub_path = keys_dir / PUBLIC_NAME
    expected = public_key_pem(key.public_key())
    if pub_path.exists():
        found = load_public_key(pub_path.read_bytes(), source=str(pub_path))
        if public_key_id(found) != public_key_id(key):
            raise IntegrityFailure(
                f"{pub_path} (key {public_key_id(found)}) does not belong to the appliance key "
                f"{public_key_id(key)}; one of the two files was replaced"
            )
        return
    # Readable by the appliance's user only, as everything in its home (airlock.private).
    _write_atomic(pub_path, expected, 0o600, exclusive=False)


def ensure_appliance_key(settings) -> Ed25519PrivateKey:
    """The appliance's signing key: loaded if present, created (0600, atomically) if not."""
    keys_dir = Path(settings.keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = keys_dir / PRIVATE_NAME
    if not path.exists():
        _write_atomic(path, private_key_pem(Ed25519PrivateKey.generate()), 0o600, exclusive=True)
    # Always read back from disk: if another process created the key first, theirs is the key.
    key = _load_private(path)
    _sync_public(keys_dir, key)
    return key


def appliance_public_key(settings) -> Ed25519PublicKey:
    """The appliance's public key, creating the key pair on first use like ensure_appliance_key."""
    return ensure_appliance_key(settings).public_key()
