"""Writing the audit log as a hash chain: every row commits to the row before it.

A row's hash is the sha256 of a canonical JSON of its id, time, actor, action, subject, detail
and the previous row's hash; the first row points at GENESIS. Checking the chain is in
`airlock.meta.audit`; this module only writes it, so the database module can use it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime
from typing import Any


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


GENESIS = "0" * 64
COLUMNS = "id, at, actor, action, subject, detail_json, prev_hash, hash"


def row_hash(row: dict[str, Any]) -> str:
    """sha256 over the row's content and its prev_hash, as canonical JSON."""
    body = {k: row[k] for k in ("id", "at", "actor", "action", "subject", "detail_json", "prev_hash")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def append(db: Any, actor: str, action: str, subject: str | None, detail: dict[str, Any]) -> tuple[int, str]:
    """Add one chained row; `db` must be inside `Meta.write()`, whose BEGIN IMMEDIATE holds the
    write lock from reading the head to storing the new hash, so writers in other processes
    cannot both chain onto the same head. Returns the new row's id and hash: the new head."""
    last = db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    row = {"at": now(), "actor": actor, "action": action, "subject": subject,
           "detail_json": json.dumps(detail, sort_keys=True), "prev_hash": last[0] if last else GENESIS}
    cur = db.execute(
        "INSERT INTO audit (at, actor, action, subject, detail_json, prev_hash) VALUES (?, ?, ?, ?, ?, ?)",
        [row["at"], actor, action, subject, row["detail_json"], row["prev_hash"]],
    )
    # The id is part of the hash (so rows cannot be renumbered), and only SQLite knows it now.
    row["id"] = cur.lastrowid
    head = row_hash(row)
    db.execute("UPDATE audit SET hash = ? WHERE id = ?", [head, row["id"]])
    return row["id"], head


def chain_unhashed(db: Any) -> int:
    """Chain rows written before the log had hashes; return how many were chained.

    Runs inside the migration's write transaction, so no writer can chain onto an unhashed
    head meanwhile. Only unhashed rows older than every hashed row are history to adopt: an
    unhashed row after a hashed one was written around the chain, and `verify` must report it.
    """
    first = db.execute("SELECT id FROM audit WHERE hash IS NOT NULL ORDER BY id LIMIT 1").fetchone()
    sql = f"SELECT {COLUMNS} FROM audit WHERE hash IS NULL" + (" AND id < ?" if first else "")
    rows = dict_rows(db.execute(sql + " ORDER BY id", list(first or ())))
    prev = GENESIS
    for row in rows:
        row["prev_hash"] = prev
        prev = row_hash(row)
        db.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", [row["prev_hash"], prev, row["id"]])
    return len(rows)


def dict_rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
