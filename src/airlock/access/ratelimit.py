"""Per-key rate limits as token buckets: requests per minute and tokens per minute.

A bucket holds up to one minute's allowance and refills continuously, so a key may burst to its
limit and then gets a steady rate. Requests take one from the request bucket up front; tokens
are charged after the answer (its usage), so the token bucket may run below zero and the key
waits until it refills. Levels are kept with a wall-clock time, so the state survives a gateway
restart: a key that spent its minute stays limited after the restart.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from airlock.errors import RateLimited

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

    def admit(self, key: dict[str, Any], now: float | None = None) -> None:
        """Take one request from the key's allowance, or raise RateLimited with Retry-After."""
        rpm, tpm = key.get("rpm") or 0, key.get("tpm") or 0
        if not rpm and not tpm:
            return
        now = time.time() if now is None else now
        with self._lock:
            if tpm:
                tokens = self._level(key["id"], "tpm", tpm, now)
                if tokens <= 0:
                    wait = (1 - tokens) * 60.0 / tpm
                    raise RateLimited(f"API key {key['id']} is over its limit of {tpm} tokens per minute; "
                                      f"retry in {wait:.0f} s", retry_after=wait)
            if rpm:
                requests = self._level(key["id"], "rpm", rpm, now)
                if requests < 1:
                    wait = (1 - requests) * 60.0 / rpm
                    raise RateLimited(f"API key {key['id']} is over its limit of {rpm} requests per minute; "
                                      f"retry in {wait:.0f} s", retry_after=wait)
                self._set(key["id"], "rpm", requests - 1, now)

    def charge(self, key: dict[str, Any], tokens: int, now: float | None = None) -> None:
        """Spend `tokens` of the key's tokens-per-minute allowance (after the answer)."""
        tpm = key.get("tpm") or 0
        if not tpm or tokens <= 0:
            return
        now = time.time() if now is None else now
        with self._lock:
            self._set(key["id"], "tpm", self._level(key["id"], "tpm", tpm, now) - tokens, now)

    def _set(self, key_id: str, kind: str, level: float, now: float) -> None:
        self._levels[(key_id, kind)] = (level, now)
        self._dirty.add((key_id, kind))

    def changed_rows(self) -> list[dict[str, Any]]:
        """The levels that changed since the last call, as `rate_buckets` rows to persist."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            return [{"key_id": k, "kind": kind, "level": self._levels[(k, kind)][0],
                     "updated": self._levels[(k, kind)][1]} for k, kind in dirty]
