"""Per-key rate limits as token buckets: requests per minute and tokens per minute.

A bucket holds up to one minute's allowance and refills continuously, so a key may burst to its
limit and then gets a steady rate. Requests take one from the request bucket up front. Tokens
are reserved up front too, as many as the request may use (its prompt's estimate plus n x
max_tokens), so no answer can take a key past its budget; when the answer's usage is known the
reservation is settled: the unused part is given back, a request that failed gives back all.
Levels are kept with a wall-clock time, so the state survives a gateway
restart: a key that spent its minute stays limited after the restart.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from airlock.errors import InvalidInput, RateLimited

KINDS = ("rpm", "tpm")


class RateLimiter:
    def __init__(self) -> None:
        self._levels: dict[tuple[str, str], tuple[float, float]] = {}  # (key, kind) -> (level, at)
        self._dirty: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def load(self, rows: list[dict[str, Any]]) -> None:
        """Levels persisted by an earlier gateway (rows of `rate_buckets`)."""
        with self._lock:
            for r in rows:
                self._levels[(r["key_id"], r["kind"])] = (r["level"], r["updated"])

    def _level(self, key_id: str, kind: str, limit: int, now: float) -> float:
        level, at = self._levels.get((key_id, kind), (float(limit), now))
        return min(float(limit), level + (now - at) * limit / 60.0)

    def admit(self, key: dict[str, Any], tokens: int = 0, now: float | None = None) -> int:
        """Take one request from the key's allowance and reserve `tokens` of its tokens per
        minute, or raise RateLimited with Retry-After (InvalidInput when `tokens` is more than a
        whole minute's allowance: waiting would not help). Returns the tokens reserved."""
        rpm, tpm = key.get("rpm") or 0, key.get("tpm") or 0
        if not rpm and not tpm:
            return 0
        if tpm and tokens > tpm:
            raise InvalidInput(f"this request may use up to {tokens} tokens (its prompt and n x max_tokens), "
                               f"more than API key {key['id']}'s whole limit of {tpm} tokens per minute; "
                               "ask for fewer (max_tokens, n)")
        now = time.time() if now is None else now
        with self._lock:
            if tpm:
                level = self._level(key["id"], "tpm", tpm, now)
                if level < max(tokens, 1):
                    wait = (max(tokens, 1) - level) * 60.0 / tpm
                    raise RateLimited(f"API key {key['id']} is over its limit of {tpm} tokens per minute "
                                      f"(this request may use {tokens}, {max(0, int(level))} are left); "
                                      f"retry in {wait:.0f} s", retry_after=wait)
            if rpm:
                requests = self._level(key["id"], "rpm", rpm, now)
                if requests < 1:
                    wait = (1 - requests) * 60.0 / rpm
                    raise RateLimited(f"API key {key['id']} is over its limit of {rpm} requests per minute; "
                                      f"retry in {wait:.0f} s", retry_after=wait)
                self._set(key["id"], "rpm", requests - 1, now)
            if tpm:
                self._set(key["id"], "tpm", level - tokens, now)
                return tokens
            return 0

    def settle(self, key: dict[str, Any], reserved: int, used: int, now: float | None = None) -> None:
        """Replace a reservation by what the answer used: the rest goes back (all of it for a
        request that failed, used 0); more than reserved (a prompt longer than its estimate) is
        charged, and the key waits until the bucket refills."""
        tpm = key.get("tpm") or 0
        if not tpm or used == reserved:
            return
        now = time.time() if now is None else now
        with self._lock:
            level = self._level(key["id"], "tpm", tpm, now) + reserved - used
            self._set(key["id"], "tpm", min(float(tpm), level), now)

    def _set(self, key_id: str, kind: str, level: float, now: float) -> None:
        self._levels[(key_id, kind)] = (level, now)
        self._dirty.add((key_id, kind))

    def changed_rows(self) -> list[dict[str, Any]]:
        """The levels that changed since the last call, as `rate_buckets` rows to persist."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            return [{"key_id": k, "kind": kind, "level": self._levels[(k, kind)][0],
                     "updated": self._levels[(k, kind)][1]} for k, kind in dirty]
