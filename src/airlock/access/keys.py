"""API keys: create (shown once), list, revoke, and check a presented key against its row.

A key reads `ak-<id>-<secret>`. Only its sha256 and a short display prefix are stored, so a
copy of the database does not let anyone call the gateway. The id in the key lets the gateway
find one row and compare one hash in constant time, instead of searching by hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from airlock.access.holders import OPERATOR, check_holder, own_holder
from airlock.access.roles import DEFAULT_ROLE, check_role
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
_DURATION_RE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

PUBLIC_COLUMNS = ("id", "name", "prefix", "role", "models_json", "expires_at", "rpm", "tpm", "max_tokens",
                  "created_at", "created_by", "last_used_at", "revoked_at", "holder")


class KeyRow(TypedDict):
    """A key as the gateway holds it in memory (`load_keys`): who a request's caller is. Its
    `role` is asked about through access/roles.py, never compared by name."""

    id: str
    name: str
    key_hash: str
    role: str
    models: frozenset[str] | None  # the aliases it may call; None: every model
    expires_at: str | None
    rpm: int
    tpm: int
    max_tokens: int
    revoked_at: str | None
    holder: str | None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_expiry(value: str | None, *, start: datetime | None = None) -> str | None:
    """'90d', '12h', '30m', '2w' or an ISO date/time -> an ISO UTC timestamp; None: never."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    start = start or datetime.now(UTC)
    if match := _DURATION_RE.match(value):
        amount = int(match.group(1))
        if amount <= 0:
            raise InvalidInput(f"--expires {value!r}: the duration must be positive")
        return (start + timedelta(**{_UNITS[match.group(2)]: amount})).isoformat(timespec="seconds")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"--expires {value!r}: expected a duration such as 90d, 12h, 30m, 2w, "
                           "or an ISO date such as 2027-03-01") from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when <= start:
        raise InvalidInput(f"--expires {value!r} lies in the past")
    return when.astimezone(UTC).isoformat(timespec="seconds")


def parse_models(models: list[str] | str | None) -> list[str] | None:
    """The aliases an inference key may call; None means every model."""
    if models is None:
        return None
    items = models.split(",") if isinstance(models, str) else list(models)
    names = sorted({m.strip() for m in items if m.strip()})
    if not names:
        return None
    if bad := [m for m in names if not _ALIAS_RE.match(m)]:
        raise InvalidInput(f"--models: not valid model names: {', '.join(map(repr, bad))}")
    return names


def create_key(meta: Meta, name: str, *, role: str = DEFAULT_ROLE, models: list[str] | str | None = None,
               expires: str | None = None, rpm: int = 0, tpm: int = 0, max_tokens: int = 0,
               actor: str = "operator", holder: str | None = None) -> tuple[str, str]:
    """Make a key; return (key_id, secret). The secret is never stored and cannot be shown again.

    Every field is checked before any is refused, so a caller (the web UI's form) sees all its
    problems at once. `holder` is the person the key is for (see access/holders.py); without one
    the key holds a namespace of its own."""
    problems: list[str] = []

    def checked(parse, value):
        try:
            return parse(value)
        except InvalidInput as exc:
            problems.append(exc.message)
            return None

    name = (name or "").strip()
    if not name:
        problems.append("an API key needs a name (what application or person it is for)")
    elif len(name) > _MAX_NAME:
        problems.append(f"API key name is {len(name)} characters long; at most {_MAX_NAME}")
    checked(check_role, role)
    scope = checked(parse_models, models)
    expires_at = checked(parse_expiry, expires)
    holder = checked(check_holder, holder) if holder is not None else None
    problems += [f"{label} {value}: a limit is 0 (none) or positive"
                 for label, value in (("--rpm", rpm), ("--tpm", tpm), ("--max-tokens", max_tokens)) if value < 0]
    if len(problems) == 1:
        raise InvalidInput(problems[0])
    if problems:
        raise InvalidInput(f"{len(problems)} problems with the API key", problems=problems)
    with meta.write() as db:
        while True:
            key_id = secrets.token_hex(_ID_BYTES)
            if not db.execute("SELECT 1 FROM api_keys WHERE id = ?", [key_id]).fetchone():
                break
        secret = f"{KEY_PREFIX}-{key_id}-{secrets.token_urlsafe(_SECRET_BYTES)}"
        prefix = secret[: len(KEY_PREFIX) + len(key_id) + 2 + _SHOWN_SECRET_CHARS]
        holder = holder or own_holder(key_id)
        db["api_keys"].insert(
            {"id": key_id, "name": name, "key_hash": hash_secret(secret), "prefix": prefix,
             "role": role, "models_json": json.dumps(scope) if scope is not None else None,
             "expires_at": expires_at, "rpm": rpm, "tpm": tpm, "max_tokens": max_tokens, "created_at": now(),
             "created_by": actor, "revoked_at": None, "last_used_at": None, "holder": holder}
        )
    meta.audit(actor, "apikey.create", key_id, name=name, prefix=prefix, role=role, models=scope,
               expires_at=expires_at, rpm=rpm, tpm=tpm, max_tokens=max_tokens, holder=holder)
    return key_id, secret


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in PUBLIC_COLUMNS if k != "models_json"}
    out["models"] = json.loads(row["models_json"]) if row.get("models_json") else None
    return out


def list_keys(meta: Meta, *, include_revoked: bool = True) -> list[dict[str, Any]]:
    """Every key's id, name, display prefix, role, scope, limits and dates; never the hash."""
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    rows = meta.query(f"SELECT {', '.join(PUBLIC_COLUMNS)} FROM api_keys{where} ORDER BY created_at, rowid")
    return [_public(r) for r in rows]


def get_key(meta: Meta, key_id: str) -> dict[str, Any]:
    row = meta.one(f"SELECT {', '.join(PUBLIC_COLUMNS)} FROM api_keys WHERE id = ?", (key_id,))
    if row is None:
        raise NotFound(f"no API key with id {key_id!r} (see `airlock apikey list`)")
    return _public(row)


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


def load_keys(meta: Meta) -> dict[str, KeyRow]:
    """Every key's row by id, hash included: what the gateway keeps in memory."""
    rows = meta.query("SELECT id, name, key_hash, role, models_json, expires_at, rpm, tpm, max_tokens, "
                      "revoked_at, holder FROM api_keys")
    keys = {}
    for r in rows:
        r["models"] = frozenset(json.loads(r.pop("models_json"))) if r["models_json"] else None
        keys[r["id"]] = r
    return keys


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


def presented_id(authorization: str | None, keys: dict[str, dict[str, Any]]) -> str | None:
    """The id part of a presented `Bearer ak-<id>-...` key when it names an existing key (right
    secret or not); None otherwise. Never raises: it only says whom a failure concerns."""
    _, _, token = (authorization or "").strip().partition(" ")
    parts = token.strip().split("-", 2)
    return parts[1] if len(parts) == 3 and parts[0] == KEY_PREFIX and parts[1] in keys else None


def check_key(keys: dict[str, KeyRow], authorization: str | None,
              at: datetime | None = None) -> KeyRow:
    """The key's row for a valid `Authorization: Bearer ak-...` header, else Unauthorized.

    Messages say what is wrong without repeating any part of the presented key.
    """
    token = parse_bearer(authorization)
    parts = token.split("-", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        raise Unauthorized("invalid API key: airlock keys look like 'ak-<id>-<secret>'")
    row = keys.get(parts[1])
    stored = row["key_hash"] if row else _DUMMY_HASH
    if not hmac.compare_digest(hash_secret(token), stored) or row is None:
        # One message for an unknown id and a wrong secret: no oracle for which ids exist.
        raise Unauthorized("invalid API key: it is unknown or its secret is wrong")
    return check_usable(row, at)


def check_usable(row: KeyRow, at: datetime | None = None) -> KeyRow:
    """The key row, unless it is revoked or expired (Unauthorized, saying which and when)."""
    if row["revoked_at"]:
        raise Unauthorized(f"API key {row['id']} was revoked at {row['revoked_at']}")
    if row["expires_at"] and datetime.fromisoformat(row["expires_at"]) <= (at or datetime.now(UTC)):
        raise Unauthorized(f"API key {row['id']} expired at {row['expires_at']}")
    return row


def authenticate(meta: Meta, authorization: str | None) -> dict[str, Any]:
    """`check_key` against the database itself: for callers without a gateway's memory."""
    return check_key(load_keys(meta), authorization)


def holder_of_actor(meta: Meta, actor: str) -> str:
    """The person behind an audit actor: a key's holder for `key:ID`, the operator for what was
    done on the host (`os:USER`, the worker)."""
    if actor.startswith("key:"):
        row = meta.one("SELECT holder FROM api_keys WHERE id = ?", (actor[4:],))
        return (row and row["holder"]) or own_holder(actor[4:])
    return OPERATOR
