"""The metadata database: sqlite-utils over one SQLite file in WAL mode.

Every write goes through `Meta.write()`, a `BEGIN IMMEDIATE` transaction, so concurrent
writers (gateway, worker, CLI) queue on the write lock up front instead of failing half-way.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils

from airlock.meta.chain import append, chain_unhashed, now
from airlock.meta.migrations import MIGRATIONS
from airlock.private import create_private_file, make_private_dir

if TYPE_CHECKING:
    from airlock.meta.anchor import Anchors

__all__ = ["Meta", "now", "open_meta"]


class Meta:
    """Thread-safe access to the metadata database: one connection per thread."""

    def __init__(self, path: Path, anchors: Anchors | None = None) -> None:
        self.path = Path(path)
        self.anchors = anchors  # where each new audit head is signed and appended (meta/anchor.py)
        self._local = threading.local()

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE).
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            db = sqlite_utils.Database(conn)
            self._local.db = db
        return db

    @contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        db = self.db
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
        db.conn.execute("COMMIT")

    def query(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        return list(self.db.query(sql, params))

    def one(self, sql: str, params: tuple | dict = ()) -> dict[str, Any] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def audit(self, actor: str, action: str, subject: str | None = None, **detail: Any) -> None:
        """Append a row to the hash-chained audit log (see meta/audit.py), then anchor the new head."""
        with self.write() as db:
            row_id, head = append(db, actor, action, subject, detail)
        if self.anchors is not None:
            # After the commit: an anchor never names a row that a rollback took back.
            self.anchors.record(row_id, head)

    def schema_version(self) -> int:
        if "schema_migrations" not in self.db.table_names():
            return 0
        row = self.one("SELECT MAX(version) AS v FROM schema_migrations")
        return int(row["v"] or 0) if row else 0

    def migrate(self) -> int:
        """Apply every migration newer than the database; return the resulting version."""
        with self.write() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            current = self.schema_version()
            for version, sql in MIGRATIONS:
                if version <= current:
                    continue
                for statement in filter(str.strip, sql.split(";")):
                    db.execute(statement)
                db["schema_migrations"].insert({"version": version, "applied_at": now()})
            if self.schema_version() >= 2:  # audit rows from before the hash chain get chained

                chain_unhashed(db)
        return self.schema_version()


def open_meta(path: Path, anchors: Anchors | None = None) -> Meta:
    make_private_dir(path.parent)
    # SQLite gives its -wal and -shm files the database file's mode: made 0600 here, all three are.
    create_private_file(path)
    meta = Meta(path, anchors)
    meta.migrate()
    return meta
