"""The metadata database: versioned migrations, WAL, immediate write transactions."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from airlock.meta.db import open_meta
from airlock.meta.migrations import MIGRATIONS


def test_migrations_apply_once_and_record_versions(tmp_path):
    meta = open_meta(tmp_path / "a.db")
    latest = MIGRATIONS[-1][0]
    assert meta.schema_version() == latest
    assert meta.migrate() == latest  # a second start changes nothing
    assert [r["version"] for r in meta.query("SELECT version FROM schema_migrations")] == [v for v, _ in MIGRATIONS]
    assert {"runs", "stages", "models", "aliases", "api_keys", "audit"} <= set(meta.db.table_names())


def test_wal_mode(tmp_path):
    meta = open_meta(tmp_path / "a.db")
    assert meta.one("PRAGMA journal_mode")["journal_mode"] == "wal"


def test_failed_write_rolls_back(tmp_path):
    meta = open_meta(tmp_path / "a.db")
    with pytest.raises(RuntimeError):
        with meta.write() as db:
            db["audit"].insert({"at": "x", "actor": "t", "action": "a"})
            raise RuntimeError("boom")
    assert meta.db["audit"].count == 0


def test_write_takes_the_lock_up_front(tmp_path):
    """BEGIN IMMEDIATE: a second writer waits for the first instead of failing mid-transaction."""
    meta = open_meta(tmp_path / "a.db")
    other = sqlite3.connect(tmp_path / "a.db", isolation_level=None, timeout=0)
    with meta.write():
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")


def test_threads_get_their_own_connection(tmp_path):
    meta = open_meta(tmp_path / "a.db")
    errors = []

    def writer(n: int) -> None:
        try:
            for i in range(20):
                meta.audit("t", "a", f"{n}-{i}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and meta.db["audit"].count == 80
