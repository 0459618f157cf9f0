"""Failed authentications: counted per client address and per key id, limited, and summarised
for the audit log at a bounded rate.

A guess at a key (a wrong secret, an unknown id, a garbled header) or a failed sign-in is a
failure. Over `limit` failures in a window, the address, or the key id the guesses name, is
refused with 429 until the window ends, whatever it presents: that stops a guessing loop from
one address and a guessing loop spread over many addresses against one key. Everything lives
in memory and is bounded: at most MAX_ADDRESSES addresses are followed (the least recently
failing is forgotten first), and only ids of existing keys are counted, so made-up ids cannot
grow it. The audit log gets at most one row per address per minute, summarising how many
failures it made and at which doors, and at most MAX_ROWS_PER_MINUTE rows in all, so a flood
from many addresses cannot fill the disk either.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from airlock.errors import RateLimited
from airlock.meta import Meta

MAX_ADDRESSES = 10_000
SUMMARY_EVERY_S = 60.0
MAX_ROWS_PER_MINUTE = 30
ACTION = "auth.failed"
_MAX_NAMED_KEYS = 5  # key ids named in one summary row: enough to see the target, bounded


@dataclass(slots=True)
class Window:
    """Failures of one address or key id since `start`."""

    start: float
    count: int = 0


@dataclass(slots=True)
class Pending:
    """An address's failures not yet in the audit log."""

    count: int = 0
    doors: dict[str, int] = field(default_factory=dict)
    key_ids: list[str] = field(default_factory=list)
    last_row: float = float("-inf")


class AuthFailures:
    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._addresses: OrderedDict[str, Window] = OrderedDict()
        self._keys: dict[str, Window] = {}
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._rows: list[float] = []  # when recent summary rows were written
        self._lock = threading.Lock()

    def check(self, address: str, key_id: str | None, now: float | None = None) -> None:
        """RateLimited (with Retry-After) when the address or the key id is over its limit.
        Called before every key check: two dictionary lookups, no formatting unless refused."""
        if self.limit <= 0:
            return
        now = time.time() if now is None else now
        with self._lock:
            by_address = self._addresses.get(address)
            by_key = self._keys.get(key_id) if key_id else None
        for kind, name, window in (("address", address, by_address), ("API key", key_id, by_key)):
            if window is not None and window.count >= self.limit and now < window.start + self.window_s:
                wait = window.start + self.window_s - now
                raise RateLimited(f"too many failed authentications from {kind} {name} ({window.count} in "
                                  f"{self.window_s:.0f} s; AIRLOCK_AUTH_FAIL_LIMIT is {self.limit}); "
                                  f"retry in {wait:.0f} s", retry_after=wait)

    def failed(self, address: str, key_id: str | None, door: str, now: float | None = None) -> None:
        """Count a failure; `key_id` only when it names an existing key."""
        now = time.time() if now is None else now
        with self._lock:
            self._count(self._addresses, address, now)
            self._addresses.move_to_end(address)
            if key_id is not None:
                self._count(self._keys, key_id, now)
            pending = self._pending.setdefault(address, Pending())
            self._pending.move_to_end(address)
            pending.count += 1
            pending.doors[door] = pending.doors.get(door, 0) + 1
            if key_id and key_id not in pending.key_ids and len(pending.key_ids) < _MAX_NAMED_KEYS:
                pending.key_ids.append(key_id)
            for table in (self._addresses, self._pending):
                while len(table) > MAX_ADDRESSES:
                    table.popitem(last=False)

    def _count(self, windows: dict[str, Window], name: str, now: float) -> None:
        window = windows.get(name)
        if window is None or now >= window.start + self.window_s:
            window = windows[name] = Window(start=now)
        window.count += 1

    def summaries(self, now: float | None = None) -> list[dict[str, Any]]:
        """The audit rows due now: one per address whose last row is a minute old, at most
        MAX_ROWS_PER_MINUTE a minute in all; the rest wait (and keep counting) for a later turn."""
        now = time.time() if now is None else now
        rows = []
        with self._lock:
            self._rows = [t for t in self._rows if t > now - 60.0]
            for address, pending in list(self._pending.items()):
                if len(self._rows) >= MAX_ROWS_PER_MINUTE:
                    break
                if pending.count == 0 or pending.last_row > now - SUMMARY_EVERY_S:
                    continue
                rows.append({"address": address, "failures": pending.count, "doors": dict(pending.doors),
                             "key_ids": list(pending.key_ids)})
                self._pending[address] = Pending(last_row=now)
                self._rows.append(now)
            # An address that stopped failing a minute ago has nothing left to say.
            for address in [a for a, p in self._pending.items() if p.count == 0 and p.last_row <= now - SUMMARY_EVERY_S]:
                del self._pending[address]
        return rows


def recent_failures(meta: Meta, hours: float = 1.0) -> dict[str, Any]:
    """What the audit log says of failed authentications in the last `hours`: for `airlock status`."""
    since = (datetime.now(UTC) - timedelta(hours=hours)).isoformat(timespec="seconds")
    rows = meta.query("SELECT at, subject, detail_json FROM audit WHERE action = ? AND at >= ? ORDER BY id",
                      (ACTION, since))
    by_address: dict[str, int] = {}
    for row in rows:
        by_address[row["subject"]] = by_address.get(row["subject"], 0) + json.loads(row["detail_json"])["failures"]
    top = sorted(by_address.items(), key=lambda item: -item[1])[:5]
    return {"hours": hours, "failures": sum(by_address.values()), "addresses": len(by_address),
            "top": [{"address": a, "failures": n} for a, n in top], "last_at": rows[-1]["at"] if rows else None}
