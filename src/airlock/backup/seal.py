"""A sealed stream: encrypted and authenticated as a whole, written and read in chunks.

    MAGIC | header length (4 bytes, big-endian) | header (JSON) | chunk 0 | chunk 1 | ... | last chunk

The key is scrypt(passphrase, salt) (memory-hard: every guess costs about 128 MiB and half a
second); its first 32 bytes key ChaCha20-Poly1305, the sha256 of the other 32 is stored in the
header as `key_check`, so a wrong passphrase is told apart from a changed file before anything
is decrypted. Each chunk is `chunk_bytes` of plaintext (the last one fewer, possibly none) sealed
with the nonce `nonce_prefix | chunk index (4 bytes) | 1 if last else 0` and, as associated data,
every byte before the first chunk (the STREAM construction of Hoang, Reyhanitabar, Rogaway and
Vizár). So a flipped byte anywhere, a chunk moved, dropped or repeated, a stream cut at a chunk
boundary (its new last chunk was not sealed as last) or extended (the true last one was), and an
edited header all fail authentication. Nothing is held in memory beyond one chunk.

Sealed also to a recipient (an X25519 public key), the header carries an ephemeral public key and
the key is HKDF over the scrypt output and the X25519 shared secret: opening then needs both the
passphrase and the recipient's private key. The host that takes backups holds only the public
key, so it cannot read old backups; the passphrase still proves who made one, since anyone may
seal to a public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from airlock.errors import IntegrityFailure, InvalidInput

MAGIC = b"AIRLOCK-BACKUP\n"
FORMAT = "airlock.backup/v2"
CHUNK_BYTES = 1 << 20
SCRYPT = {"n": 1 << 17, "r": 8, "p": 1}
MIN_PASSPHRASE = 12
TAG = 16
_MAX_HEADER = 1 << 16


def _derive(passphrase: bytes, kdf: dict, shared: bytes | None = None) -> tuple[bytes, str]:
    out = Scrypt(salt=base64.b64decode(kdf["salt"]), length=64, n=kdf["n"], r=kdf["r"], p=kdf["p"]).derive(passphrase)
    if shared is not None:
        out = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=FORMAT.encode()).derive(out + shared)
    return out[:32], hashlib.sha256(out[32:]).hexdigest()


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def recipient_id(key: X25519PublicKey) -> str:
    return hashlib.sha256(_raw(key)).hexdigest()[:16]


def load_recipient(path: Path) -> X25519PublicKey:
    """An X25519 public key from a PEM file (`openssl pkey -in ID.pem -pubout`)."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such recipient key file") from None
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, X25519PublicKey):
        raise InvalidInput(f"{path}: not a PEM X25519 public key (make one with `openssl genpkey -algorithm X25519`)")
    return key


def load_identity(path: Path) -> X25519PrivateKey:
    """An X25519 private key from a PEM file, unencrypted (`openssl genpkey -algorithm X25519`)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such identity file") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, X25519PrivateKey):
        raise InvalidInput(f"{path}: not an unencrypted PEM X25519 private key")
    return key


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">I?", index, last)


class SealedWriter:
    """A write-only file object: what is written goes out sealed, one chunk at a time."""

    def __init__(self, sink: BinaryIO, passphrase: bytes, *, chunk_bytes: int = CHUNK_BYTES,
                 recipient: X25519PublicKey | None = None) -> None:
        if len(passphrase) < MIN_PASSPHRASE:
            raise InvalidInput(f"the backup passphrase has {len(passphrase)} characters; it needs at least "
                               f"{MIN_PASSPHRASE} (it is all that protects the appliance's private key)")
        kdf = {"name": "scrypt", **SCRYPT, "salt": base64.b64encode(os.urandom(16)).decode()}
        fields, shared = {}, None
        if recipient is not None:
            ephemeral = X25519PrivateKey.generate()
            shared = ephemeral.exchange(recipient)
            fields["recipient"] = {"key": recipient_id(recipient),
                                   "ephemeral": base64.b64encode(_raw(ephemeral.public_key())).decode()}
        key, check = _derive(passphrase, kdf, shared)
        self._prefix = os.urandom(7)
        header = json.dumps({"format": FORMAT, "aead": "ChaCha20-Poly1305", "kdf": kdf, "key_check": check,
                             "chunk_bytes": chunk_bytes, "nonce_prefix": base64.b64encode(self._prefix).decode(),
                             **fields}, sort_keys=True).encode()
        self._aad = MAGIC + struct.pack(">I", len(header)) + header
        self._sink, self._aead, self._chunk = sink, ChaCha20Poly1305(key), chunk_bytes
        self._buffer, self._index = bytearray(), 0
        sink.write(self._aad)

    def write(self, data: bytes) -> int:
        self._buffer += data
        # Keep at least one byte back: only close() knows which chunk is the last.
        while len(self._buffer) > self._chunk:
            self._seal(bytes(self._buffer[:self._chunk]), last=False)
            del self._buffer[:self._chunk]
        return len(data)

    def _seal(self, plain: bytes, *, last: bool) -> None:
        self._sink.write(self._aead.encrypt(_nonce(self._prefix, self._index, last), plain, self._aad))
        self._index += 1

    def close(self) -> None:
        self._seal(bytes(self._buffer), last=True)
        self._buffer.clear()

    def __enter__(self) -> SealedWriter:
        return self

    def __exit__(self, kind, *_exc) -> None:
        if kind is None:
            self.close()


def _header(f: BinaryIO, path: Path) -> tuple[bytes, dict]:
    start = f.read(len(MAGIC) + 4)
    if len(start) < len(MAGIC) + 4 or not start.startswith(MAGIC):
        raise IntegrityFailure(f"{path}: not a sealed airlock backup (it does not start with {MAGIC!r})")
    (length,) = struct.unpack(">I", start[len(MAGIC):])
    if length > _MAX_HEADER:
        raise IntegrityFailure(f"{path}: a header of {length} bytes; a backup's is a few hundred")
    raw = f.read(length)
    try:
        header = json.loads(raw)
        kdf = header["kdf"]
        bounded = (header["format"] == FORMAT and kdf["name"] == "scrypt" and 1 << 14 <= kdf["n"] <= 1 << 20
                   and kdf["r"] <= 16 and kdf["p"] <= 4 and 4096 <= header["chunk_bytes"] <= 1 << 24
                   and len(base64.b64decode(header["nonce_prefix"])) == 7 and isinstance(header["key_check"], str)
                   and len(base64.b64decode(kdf["salt"])) >= 16
                   and ("recipient" not in header or len(base64.b64decode(header["recipient"]["ephemeral"])) == 32))
    except (ValueError, KeyError, TypeError):
        bounded = False
    if not bounded:
        raise IntegrityFailure(f"{path}: the header is not that of an {FORMAT} backup, or its parameters are "
                               "out of bounds: the file was changed or is not a backup")
    return start + raw, header


class SealedReader:
    """A read-only file object over a sealed file: it yields only bytes that authenticated."""

    def __init__(self, path: Path, passphrase: bytes, identity: X25519PrivateKey | None = None) -> None:
        self.path = Path(path)
        try:
            self._file = self.path.open("rb")
        except FileNotFoundError:
            raise InvalidInput(f"{path}: no such backup file") from None
        try:
            self._aad, header = _header(self._file, self.path)
            key, check = _derive(passphrase, header["kdf"], self._shared(header, identity))
        except BaseException:
            self._file.close()
            raise
        if check != header["key_check"]:
            self._file.close()
            raise IntegrityFailure(f"{path}: the passphrase does not open this backup (a wrong passphrase, or "
                                   "the backup's header was changed); nothing was restored")
        self._aead, self._prefix = ChaCha20Poly1305(key), base64.b64decode(header["nonce_prefix"])
        self._chunks = self._decrypt(header["chunk_bytes"] + TAG)
        self._buffer = b""

    def _shared(self, header: dict, identity: X25519PrivateKey | None) -> bytes | None:
        if "recipient" not in header:
            return None
        sealed_to = header["recipient"]["key"]
        if identity is None:
            raise InvalidInput(f"{self.path}: sealed to the X25519 recipient key {sealed_to}; its private key is "
                               "needed as well as the passphrase (--identity)")
        if (given := recipient_id(identity.public_key())) != sealed_to:
            raise IntegrityFailure(f"{self.path}: sealed to the X25519 recipient key {sealed_to}, not to the "
                                   f"identity given ({given}); nothing was restored")
        return identity.exchange(X25519PublicKey.from_public_bytes(base64.b64decode(header["recipient"]["ephemeral"])))

    def _decrypt(self, size: int):
        current, index = self._file.read(size), 0
        while True:
            following = self._file.read(size)
            last = not following
            try:
                yield self._aead.decrypt(_nonce(self._prefix, index, last), current, self._aad)
            except InvalidTag:
                raise IntegrityFailure(
                    f"{self.path}: chunk {index} (from byte {len(self._aad) + index * size}) does not authenticate: "
                    "the backup was changed, cut short, extended, or its chunks reordered; nothing was "
                    "restored") from None
            if last:
                return
            current, index = following, index + 1

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        size = len(self._buffer) if size < 0 else size
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def read_to_end(self) -> None:
        """Authenticate whatever is left (tar stops reading at its end-of-archive blocks)."""
        for _ in self._chunks:
            pass

    def close(self) -> None:
        self._file.close()
