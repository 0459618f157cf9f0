"""API keys: created once, stored as a hash, checked in constant time, refused once revoked."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from airlock.errors import InvalidInput, NotFound, Unauthorized
from airlock.access import keys as apikeys
from airlock.meta import open_meta


@pytest.fixture
def meta(settings):
    settings.ensure_dirs()
    return open_meta(settings.db_path)


def test_create_returns_a_key_that_authenticates(meta):
    key_id, secret = apikeys.create_key(meta, "billing-app")
    assert secret.startswith(f"ak-{key_id}-")
    assert len(secret) > 40
    row = apikeys.authenticate(meta, f"Bearer {secret}")
    assert (row["id"], row["name"], row["role"], row["revoked_at"]) == (key_id, "billing-app", "inference", None)


def test_only_the_hash_and_a_short_prefix_are_stored(meta):
    key_id, secret = apikeys.create_key(meta, "app")
    stored = meta.one("SELECT * FROM api_keys WHERE id = ?", (key_id,))
    assert stored["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret.startswith(stored["prefix"]) and len(stored["prefix"]) <= len(f"ak-{key_id}-") + 4
    dump = json.dumps(meta.query("SELECT * FROM api_keys")) + json.dumps(meta.query("SELECT * FROM audit"))
    assert secret not in dump
    assert secret.split("-", 2)[2] not in dump


def test_list_never_shows_the_hash(meta):
    apikeys.create_key(meta, "a")
    apikeys.create_key(meta, "b")
    rows = apikeys.list_keys(meta)
    assert [r["name"] for r in rows] == ["a", "b"]
    assert all("key_hash" not in r for r in rows)
    assert all({"id", "name", "prefix", "role", "models", "expires_at", "last_used_at", "revoked_at"} <= set(r)
               for r in rows)


@pytest.mark.parametrize("header, fragment", [
    (None, "missing API key"),
    ("", "missing API key"),
    ("Basic abc", "malformed Authorization header"),
    ("Bearer ", "malformed Authorization header"),
    ("Bearer sk-something-else", "airlock keys look like"),
])
def test_malformed_headers_are_refused_with_a_reason(meta, header, fragment):
    with pytest.raises(Unauthorized, match=fragment):
        apikeys.authenticate(meta, header)


def test_wrong_secret_and_unknown_id_are_refused_without_echoing_the_key(meta):
    key_id, secret = apikeys.create_key(meta, "app")
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    unknown = f"ak-00000000-{secret.split('-', 2)[2]}"
    for token in (wrong, unknown):
        with pytest.raises(Unauthorized) as info:
            apikeys.authenticate(meta, f"Bearer {token}")
        assert token.split("-", 2)[2] not in str(info.value)
        assert "invalid API key" in str(info.value)


def test_comparison_is_constant_time_against_the_looked_up_hash(meta, monkeypatch):
    key_id, secret = apikeys.create_key(meta, "app")
    stored = meta.one("SELECT key_hash FROM api_keys WHERE id = ?", (key_id,))["key_hash"]
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(apikeys.hmac, "compare_digest", spy)
    apikeys.authenticate(meta, f"Bearer {secret}")
    assert calls == [(hashlib.sha256(secret.encode()).hexdigest(), stored)]
    # An unknown id still pays for one hash and one comparison, so timing tells nothing.
    calls.clear()
    with pytest.raises(Unauthorized):
        apikeys.authenticate(meta, "Bearer ak-ffffffff-whatever")
    assert len(calls) == 1


def test_revoked_keys_are_refused_and_revoke_is_audited(meta):
    key_id, secret = apikeys.create_key(meta, "app")
    row = apikeys.revoke_key(meta, key_id)
    assert row["revoked_at"]
    with pytest.raises(Unauthorized, match="revoked"):
        apikeys.authenticate(meta, f"Bearer {secret}")
    # Revoking again changes nothing and is not audited twice.
    assert apikeys.revoke_key(meta, key_id)["revoked_at"] == row["revoked_at"]
    actions = [r["action"] for r in meta.query("SELECT action FROM audit WHERE subject = ?", (key_id,))]
    assert actions == ["apikey.create", "apikey.revoke"]
    assert apikeys.list_keys(meta, include_revoked=False) == []


def test_revoke_unknown_key_and_bad_names(meta):
    with pytest.raises(NotFound, match="no API key"):
        apikeys.revoke_key(meta, "nope")
    with pytest.raises(InvalidInput, match="needs a name"):
        apikeys.create_key(meta, "  ")
    with pytest.raises(InvalidInput, match="at most"):
        apikeys.create_key(meta, "x" * 101)

