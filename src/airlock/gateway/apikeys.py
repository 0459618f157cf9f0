"""API keys for the gateway: create (shown once), list, revoke, authenticate.

A key reads `ak-<id>-<secret>`. Only its sha256 and a short display prefix are stored, so a
copy of the database does not let anyone call the gateway. The id in the key lets the gateway
fetch one row and compare one hash in constant time, instead of searching by hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from airlock.errors import InvalidInput, NotFound, Unauthorized
from airlock.meta import Meta
from airlock.meta.db import now

KEY_PREFIX = "ak"
_ID_BYTES = 4  # 8 hex characters: ids are listed to operators, so they stay short
_SECRET_BYTES = 32
_SHOWN_SECRET_CHARS = 4
_MAX_NAME = 100
# Compared against when the key id is unknown, so that path does the same work as a real one.
_DUMMY_HASH = hashlib.sha256(b"airlock-no-such-key").hexdigest()

_PUBLIC_COLUMNS = "id, name, prefix, created_at, revoked_at"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_key(meta: Meta, name: str, *, actor: str = "operator") -> tuple[str, str]:
    """Make a key; return (key_id, secret). The secret is never stored and cannot be shown again."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput("an API key needs a name (what application or person it is for)")
    if len(name) > _MAX_NAME:
        raise InvalidInput(f"API key name is {len(name)} characters long; at most {_MAX_NAME}")
    with meta.write() as db:
        while True:
            key_id = secrets.token_hex(_ID_BYTES)
            if not db.execute("SELECT 1 FROM api_keys WHERE id = ?", [key_id]).fetchone():
                break
        secret = f"{KEY_PREFIX}-{key_id}-{secrets.token_urlsafe(_SECRET_BYTES)}"
        prefix = secret[: len(KEY_PREFIX) + len(key_id) + 2 + _SHOWN_SECRET_CHARS]
        db["api_keys"].insert(
            {"id": key_id, "name": name, "key_hash": hash_secret(secret), "prefix": prefix,
             "created_at": now(), "revoked_at": None}
        )
    meta.audit(actor, "apikey.create", key_id, name=name, prefix=prefix)
    return key_id, secret


def list_keys(meta: Meta, *, include_revoked: bool = True) -> list[dict[str, Any]]:
    """Every key's id, name, display prefix and dates; never the hash."""
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    return meta.query(f"SELECT {_PUBLIC_COLUMNS} FROM api_keys{where} ORDER BY created_at, rowid")


def get_key(meta: Meta, key_id: str) -> dict[str, Any]:
    row = meta.one(f"SELECT {_PUBLIC_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
    if row is None:
        raise NotFound(f"no API key with id {key_id!r} (see `airlock apikey list`)")
    return row


def revoke_key(meta: Meta, key_id: str, *, actor: str = "operator") -> dict[str, Any]:
    """Refuse the key from now on. Revoking a revoked key changes nothing."""
    with meta.write() as db:
        cur = db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", [now(), key_id]
        )
        changed = cur.rowcount
    row = get_key(meta, key_id)
    if changed:
        meta.audit(actor, "apikey.revoke", key_id, name=row["name"])
    return row


def parse_bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized(
            "missing API key: send the header 'Authorization: Bearer <key>' "
            "(create a key with `airlock apikey create`)"
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    return token.strip()


def authenticate(meta: Meta, authorization: str | None) -> dict[str, Any]:
    """Return the key's row for a valid `Authorization: Bearer ak-...` header, else Unauthorized.

    Messages say what is wrong without repeating any part of the presented key.
    """
    token = parse_bearer(authorization)
    parts = token.split("-", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        raise Unauthorized("invalid API key: airlock keys look like 'ak-<id>-<secret>'")
    row = meta.one("SELECT id, name, key_hash, revoked_at FROM api_keys WHERE id = ?", (parts[1],))
    stored = row["key_hash"] if row else _DUMMY_HASH
    if not hmac.compare_digest(hash_secret(token), stored) or row is None:
        # One message for an unknown id and a wrong secret: no oracle for which ids exist.
        raise Unauthorized("invalid API key: it is unknown or its secret is wrong")
    if row["revoked_at"]:
        raise Unauthorized(f"API key {row['id']} was revoked at {row['revoked_at']}")
    return {k: row[k] for k in ("id", "name", "revoked_at")}
