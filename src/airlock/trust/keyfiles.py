"""The trust root's signing keys on disk: passphrase-protected, private, never overwritten.

    NAME.key   Ed25519 private key, PKCS#8 PEM encrypted with the holder's passphrase, mode 0600
    NAME.pub   its public key, SubjectPublicKeyInfo PEM, to hand to whoever adds it to a root

A key file that group or others may read is refused rather than repaired, like the appliance key
(keys.py): someone may already have copied it, and its signature then proves nothing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airlock.errors import IntegrityFailure, InvalidInput, NotFound
from airlock.trust.atomic import write_atomic
from airlock.trust.ed25519 import key_id, public_pem, raw_from_pem

# Asked once per key file: the CLI prompts (twice for a new key), reads a file or the environment.
Passphrase = Callable[[Path], bytes]
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


def public_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signing_key_id(key: Ed25519PrivateKey) -> str:
    return key_id(public_raw(key))


def public_path(private_path: Path) -> Path:
    return private_path.with_suffix(PUBLIC_SUFFIX)


def _ask(passphrase: Passphrase, path: Path) -> bytes:
    secret = passphrase(path)
    if not secret:
        raise InvalidInput(f"{path}: an empty passphrase; a signing key of the trust root needs one")
    return secret


def create_key_file(path: Path, passphrase: Passphrase) -> Ed25519PrivateKey:
    """A new key in `path` (0600, encrypted) with its public half in NAME.pub; existing files are kept."""
    path = Path(path)
    if path.suffix != PRIVATE_SUFFIX:
        raise InvalidInput(f"{path}: a key file's name ends in {PRIVATE_SUFFIX}")
    for existing in (path, public_path(path)):
        if existing.exists():
            raise InvalidInput(f"{existing}: exists; key files are never overwritten")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(_ask(passphrase, path)))
    if not write_atomic(path, encrypted, 0o600, exclusive=True):
        raise InvalidInput(f"{path}: was created by someone else meanwhile; key files are never overwritten")
    write_atomic(public_path(path), public_pem(public_raw(key)), 0o644)
    return key


@contextmanager
def new_key_files(paths: list[Path], passphrase: Passphrase) -> Iterator[list[Ed25519PrivateKey]]:
    """Create key files for a ceremony; if the ceremony then fails, remove them: they signed nothing."""
    created: list[Path] = []
    try:
        keys = []
        for path in paths:
            keys.append(create_key_file(path, passphrase))
            created += [path, public_path(path)]
        yield keys
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise


def check_private_file(path: Path, *, what: str = "key file") -> None:
    """Refuse a secret file that is missing, not a regular file, someone else's, or readable by others."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise NotFound(f"{path}: no such {what}") from None
    if not stat.S_ISREG(st.st_mode):
        raise IntegrityFailure(f"{path}: a {what} must be a regular file (not a link or a device)")
    if st.st_mode & 0o077:
        raise IntegrityFailure(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o}, group or others may read this {what}; it is "
            f"refused. If nobody else could have read it, restrict it with 'chmod 600 {path}'; otherwise "
            "treat it as leaked (a leaked signing key is revoked and replaced)")
    if st.st_uid != os.getuid():
        raise IntegrityFailure(f"{path}: the {what} belongs to uid {st.st_uid}, not to this user")


def load_signing_key(path: Path, passphrase: Passphrase) -> Ed25519PrivateKey:
    """A private key from its encrypted key file; the passphrase is asked only after the file checks."""
    path = Path(path)
    check_private_file(path)
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=_ask(passphrase, path))
    except TypeError:
        raise IntegrityFailure(f"{path}: the key file is not passphrase-protected; a signing key of the trust "
                               "root must be (make a new one with `airlock trust new-key`)") from None
    except ValueError:
        raise InvalidInput(f"{path}: wrong passphrase, or not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IntegrityFailure(f"{path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_file(path: Path) -> bytes:
    """The raw 32 bytes of an Ed25519 public key from a PEM file (NAME.pub)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise NotFound(f"{path}: no such public key file") from None
    return raw_from_pem(data, source=str(path))
