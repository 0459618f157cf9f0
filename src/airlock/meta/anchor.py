"""The audit chain's head, anchored outside the database: one signed line per row written.

The hash chain (chain.py) shows an edited or inserted row, but not the newest rows deleted by
someone who also resets `sqlite_sequence`: what remains is a shorter chain, intact. So every row
written through `Meta.audit` appends one line to a file outside `airlock.db`:

    {"at": ..., "hash": <the row's hash>, "id": <the row's id>, "key": <key id>, "sig": <base64>}

`sig` is the appliance key's Ed25519 signature over DOMAIN and the canonical JSON of id, hash and
at. The file is opened with O_APPEND and each line is one write(), so the gateway, the worker and
the CLI, each in its own process, append whole lines without a lock; lines may land slightly out
of id order, and a reader takes the highest id as the newest. Where `audit_syslog` is set, the
same line goes to syslog, so a copy leaves the host (the site's log host) as it is written.

The signing key is the appliance's (keys/appliance.key). This package is the foundation and does
not import trust/, so the key is read here with `cryptography` directly; when the key does not
exist yet it is created the way trust/keys.py creates it (0600, never replacing another's).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import logging.handlers
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from airlock.config import Settings
from airlock.meta.chain import now

DOMAIN = b"airlock.audit-anchor/v1\n"
KEY_NAME = "appliance.key"  # the same file as trust/keys.py's PRIVATE_NAME
SYSLOG_IDENT = "airlock-audit-anchor: "


@dataclass(frozen=True)
class Anchor:
    """One verified anchor line: the row it names and where it was read."""

    id: int
    hash: str
    at: str
    line: int


def _message(row_id: int, head_hash: str, at: str) -> bytes:
    body = json.dumps({"at": at, "hash": head_hash, "id": row_id}, sort_keys=True, separators=(",", ":"))
    return DOMAIN + body.encode()


def public_id(key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of sha256 over the raw key, as trust/keys.py's public_key_id."""
    return hashlib.sha256(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()[:16]


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600
        try:
            os.write(fd, pem)
            os.fsync(fd)
            os.close(fd)
            try:
                os.link(tmp, path)  # never replaces: if another process made the key first, it is the key
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: a {type(key).__name__}, not the appliance's Ed25519 key")
    return key


def _syslog_handler(address: str) -> logging.Handler:
    """"/dev/log" (a local socket) or "HOST:PORT" (UDP), for logging.handlers.SysLogHandler."""
    host, sep, port = address.rpartition(":")
    target: str | tuple[str, int] = (host, int(port)) if sep and not address.startswith("/") else address
    handler = logging.handlers.SysLogHandler(address=target, facility=logging.handlers.SysLogHandler.LOG_AUTH)
    handler.ident = SYSLOG_IDENT
    return handler


class Anchors:
    """Where a database's anchors go; `record` is called by Meta.audit after each commit."""

    def __init__(self, path: Path, key_path: Path, syslog: str = "") -> None:
        self.path, self.key_path, self.syslog = Path(path), Path(key_path), syslog
        self._key: Ed25519PrivateKey | None = None
        self._logger: logging.Logger | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> Anchors:
        return cls(settings.audit_anchor_path, settings.keys_dir / KEY_NAME, settings.audit_syslog)

    def key(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key = load_or_create_key(self.key_path)
        return self._key

    def record(self, row_id: int, head_hash: str) -> None:
        key, at = self.key(), now()
        signature = key.sign(_message(row_id, head_hash, at))
        line = json.dumps({"at": at, "hash": head_hash, "id": row_id, "key": public_id(key.public_key()),
                           "sig": base64.b64encode(signature).decode()}, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line.encode())  # one write of one line: appends from other processes interleave whole
        finally:
            os.close(fd)
        if self.syslog and (logger := self._syslog()) is not None:
            logger.info(line.rstrip("\n"))

    def _syslog(self) -> logging.Logger | None:
        """The syslog sender, or None while syslog cannot be reached: the line is in the file
        already, and a change that is committed must not fail for want of a copy."""
        if self._logger is None:
            try:
                handler = _syslog_handler(self.syslog)
            except (OSError, ValueError) as exc:
                logging.getLogger("airlock.audit").warning("audit anchors: syslog %s unreachable (%s); "
                                                           "anchors go to %s only", self.syslog, exc, self.path)
                return None
            logger = logging.getLogger(f"airlock.audit.anchor.{id(self)}")
            logger.propagate, logger.level = False, logging.INFO
            logger.addHandler(handler)
            self._logger = logger
        return self._logger


def read_anchors(path: Path, public: Ed25519PublicKey) -> Iterator[Anchor | str]:
    """Every line of the anchor file: an Anchor when its signature holds, else what is wrong with it."""
    expected_key = public_id(public)
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            where = f"{path} line {number}"
            try:
                entry = json.loads(raw)
                row_id, head, at, kid = int(entry["id"]), str(entry["hash"]), str(entry["at"]), entry["key"]
                signature = base64.b64decode(entry["sig"], validate=True)
            except (ValueError, KeyError, TypeError):
                yield f"{where}: not an anchor (unreadable JSON or a missing field): the file was edited"
                continue
            if kid != expected_key:
                yield f"{where}: signed by key {kid}, not by this appliance's key {expected_key}"
                continue
            try:
                public.verify(signature, _message(row_id, head, at))
            except InvalidSignature:
                yield f"{where}: its signature does not hold for row {row_id}: the line was edited or forged"
                continue
            yield Anchor(row_id, head, at, number)
