"""The hash-chained audit log: chaining under concurrent processes, and tampering named precisely.

Tampering is done the way an intruder would: with the sqlite3 module on the database file.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from waiting import wait_for

from airlock.meta import open_meta
from airlock.meta import chain
from airlock.meta.audit import list_rows, verify
from airlock.meta.chain import GENESIS, row_hash
from airlock.meta.migrations import MIGRATIONS

AIRLOCK = Path(sys.executable).parent / "airlock"  # the installed console script


def _expected_hash(row: dict) -> str:
    """The documented hash, computed independently of the code under test."""
    fields = ("id", "at", "actor", "action", "subject", "detail_json", "prev_hash")
    body = json.dumps({k: row[k] for k in fields}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def _rows(db_path: Path) -> list[dict]:
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM audit ORDER BY id")]
    conn.close()
    return rows


def _tamper(db_path: Path, sql: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(sql, params)
    conn.close()


@pytest.fixture
def log(airlock):
    """An appliance with five audit rows, ids 1-5."""
    for n in range(1, 6):
        airlock.meta.audit("os:alice", "apikey.create", f"k{n}", n=n)
    return airlock


def _problems(airlock) -> list[tuple[str, int | None]]:
    return [(p.kind, p.id) for p in verify(airlock.meta).problems]


def test_rows_are_chained_by_the_documented_hash(log):
    rows = _rows(log.settings.db_path)
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["prev_hash"] == GENESIS
    for before, row in zip(rows, rows[1:], strict=False):
        assert row["prev_hash"] == before["hash"]
    assert all(r["hash"] == _expected_hash(r) == row_hash(r) for r in rows)
    report = verify(log.meta)
    assert report.ok and report.rows == 5 and report.head_id == 5 and report.head_hash == rows[-1]["hash"]
    assert "intact: 5 rows" in report.summary()


def test_an_empty_log_is_intact(airlock):
    report = verify(airlock.meta)
    assert report.ok and report.rows == 0 and report.head_hash == GENESIS


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from airlock.meta import open_meta
    db, name, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    meta = open_meta(Path(db))
    (go.parent / f"ready-{name}").touch()  # imported and open: only now may the race begin
    while not go.exists():
        time.sleep(0.001)
    for i in range(60):
        meta.audit(name, "test.write", f"{name}-{i}")
        time.sleep(0.002)  # like real callers, leave gaps in which another process takes the lock
""")


def test_writers_in_separate_processes_chain_onto_each_other(tmp_path):
    db, go = tmp_path / "airlock.db", tmp_path / "go"
    open_meta(db)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), name, str(go)]) for name in ("p1", "p2", "p3")]
    # Start together, so their appends interleave: a process still importing when the others
    # began would find them done (imports take seconds on a busy host, the writes 0.2 s).
    wait_for(lambda: all((tmp_path / f"ready-{name}").exists() for name in ("p1", "p2", "p3")), timeout=120,
             what="the three writers to be ready")
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    rows = _rows(db)
    assert len(rows) == 180
    # Interleaved, not one process after another: the chain was really contended.
    actors = [r["actor"] for r in rows]
    assert sum(a != b for a, b in zip(actors, actors[1:], strict=False)) > 10
    # No two rows chained onto the same head: each prev_hash is used exactly once.
    assert len({r["prev_hash"] for r in rows}) == 180
    report = verify(open_meta(db))
    assert report.ok, report.problems
    assert report.rows == 180


def test_an_edited_row_is_named(log):
    _tamper(log.settings.db_path, "UPDATE audit SET detail_json = ? WHERE id = 3", ('{"n": 99}',))
    report = verify(log.meta)
    assert _problems(log) == [("edited", 3)]
    assert report.problems[0].message == "row 3 was edited: its contents no longer match its hash"
    assert "row 3 was edited" in report.summary()


def test_an_edited_row_with_its_hash_recomputed_is_named(log):
    row = _rows(log.settings.db_path)[2]
    row["actor"] = "os:mallory"
    _tamper(log.settings.db_path, "UPDATE audit SET actor = ?, hash = ? WHERE id = 3", (row["actor"], row_hash(row)))
    problems = verify(log.meta).problems
    assert [(p.kind, p.id) for p in problems] == [("edited", 3)]
    assert "hash recomputed" in problems[0].message and "row 4" in problems[0].message


def test_a_deleted_middle_row_is_named(log):
    _tamper(log.settings.db_path, "DELETE FROM audit WHERE id = 3")
    problems = verify(log.meta).problems
    assert [(p.kind, p.id) for p in problems] == [("deleted", 3)]
    assert problems[0].message == "row 3 was deleted: ids jump from 2 to 4"


def test_deleted_first_rows_are_named(log):
    _tamper(log.settings.db_path, "DELETE FROM audit WHERE id <= 2")
    problems = verify(log.meta).problems
    assert [(p.kind, p.id) for p in problems] == [("deleted", 1)]
    assert "rows 1-2 were deleted" in problems[0].message


@pytest.mark.parametrize("how", ["no hash", "own hash, wrong prev_hash"])
def test_a_forged_row_at_the_end_is_named(log, how):
    row = {"id": 6, "at": "2030-01-01T00:00:00.000+00:00", "actor": "os:alice", "action": "apikey.revoke",
           "subject": "k1", "detail_json": "{}", "prev_hash": "f" * 64 if how != "no hash" else None}
    row["hash"] = row_hash(row) if how != "no hash" else None
    _tamper(log.settings.db_path, "INSERT INTO audit VALUES (:id, :at, :actor, :action, :subject, :detail_json, "
                                  ":prev_hash, :hash)", row)
    problems = verify(log.meta).problems
    assert [(p.kind, p.id) for p in problems] == [("inserted", 6)]
    assert problems[0].message.startswith("row 6 was inserted")


def test_a_forged_row_in_a_freed_middle_id_is_named(log):
    """Every id is taken, so a row goes in the middle only where one was deleted."""
    _tamper(log.settings.db_path, "DELETE FROM audit WHERE id = 3")
    row = {"id": 3, "at": "2030-01-01T00:00:00.000+00:00", "actor": "os:alice", "action": "apikey.create",
           "subject": "forged", "detail_json": "{}", "prev_hash": "e" * 64}
    row["hash"] = row_hash(row)
    _tamper(log.settings.db_path, "INSERT INTO audit VALUES (:id, :at, :actor, :action, :subject, :detail_json, "
                                  ":prev_hash, :hash)", row)
    assert _problems(log) == [("inserted", 3)]


def test_deleting_the_newest_rows_is_detected(log):
    _tamper(log.settings.db_path, "DELETE FROM audit WHERE id >= 4")
    problems = verify(log.meta).problems
    assert [(p.kind, p.id) for p in problems] == [("truncated", 4)]
    assert problems[0].message == "the newest rows 4-5 were deleted: ids reached 5 but the last row is 3"


def test_deleting_every_row_is_detected(log):
    _tamper(log.settings.db_path, "DELETE FROM audit")
    assert _problems(log) == [("truncated", 1)]


def test_a_deleted_newest_row_still_shows_after_new_rows(log):
    _tamper(log.settings.db_path, "DELETE FROM audit WHERE id = 5")
    log.meta.audit("worker", "run.started", "r1")
    assert _problems(log) == [("deleted", 5)]


def test_every_problem_is_reported_first_one_first(log):
    _tamper(log.settings.db_path, "UPDATE audit SET subject = 'x' WHERE id = 2")
    _tamper(log.settings.db_path, "DELETE FROM audit WHERE id = 4")
    assert _problems(log) == [("edited", 2), ("deleted", 4)]


def test_a_recorded_head_catches_a_log_rewritten_as_a_whole(log):
    head = verify(log.meta).head_hash
    log.meta.audit("worker", "run.started", "r1")
    assert verify(log.meta, head=head).ok  # later rows do not matter: the old head is still in the chain
    conn = sqlite3.connect(log.settings.db_path)
    with conn:  # edit row 1 and recompute every hash after it: the chain alone cannot tell
        prev = GENESIS
        for row in _rows(log.settings.db_path):
            row["subject"] = "rewritten" if row["id"] == 1 else row["subject"]
            row["prev_hash"] = prev
            prev = row_hash(row)
            conn.execute("UPDATE audit SET subject = ?, prev_hash = ?, hash = ? WHERE id = ?",
                         (row["subject"], row["prev_hash"], prev, row["id"]))
    conn.close()
    assert verify(log.meta).ok
    assert [p.kind for p in verify(log.meta, head=head).problems] == ["rewritten"]


def test_rows_from_before_the_chain_are_chained_once_and_forged_ones_are_not(tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    with conn:  # a database as version 1 left it, with audit rows and no hashes
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        conn.executescript(MIGRATIONS[0][1])
        conn.execute("INSERT INTO schema_migrations VALUES (1, 'then')")
        for n in range(3):
            conn.execute("INSERT INTO audit (at, actor, action) VALUES ('then', 'cli', ?)", (f"old.{n}",))
    conn.close()
    meta = open_meta(db)
    meta.audit("worker", "new.row")
    assert verify(meta).ok and verify(meta).rows == 4
    assert _rows(db)[3]["prev_hash"] == _rows(db)[2]["hash"]
    # A row slipped in later without a hash is no history to adopt: reopening leaves it named.
    _tamper(db, "INSERT INTO audit (at, actor, action) VALUES ('now', 'os:mallory', 'forged')")
    assert [(p.kind, p.id) for p in verify(open_meta(db)).problems] == [("inserted", 5)]


@pytest.fixture
def timed(airlock, monkeypatch):
    """Rows at known times (the hash covers whatever `at` is, so the chain stays intact)."""
    rows = [("2025-03-01T09:00:00.000+00:00", "os:alice", "apikey.create"),
            ("2025-03-01T23:30:00.000+00:00", "key:ab12cd34", "dataset.add"),
            ("2025-03-02T08:00:00.000+00:00", "os:alice", "apikey.revoke"),
            ("2025-03-03T12:00:00.000+00:00", "worker", "alias.switched")]
    for at, actor, action in rows:
        monkeypatch.setattr(chain, "now", lambda at=at: at)
        airlock.meta.audit(actor, action, "s")
    return airlock


def test_list_rows_filters_oldest_first(timed):
    def ids(**kw):
        return [r["id"] for r in list_rows(timed.meta, **kw)]

    assert ids() == [1, 2, 3, 4]
    assert ids(actor="os:alice") == [1, 3]
    assert ids(action="apikey.") == [1, 3]
    assert ids(action="apikey") == []  # exact unless it ends in a dot
    assert ids(since="2025-03-01T23:00") == [2, 3, 4]
    assert ids(until="2025-03-01") == [1, 2]  # a bare date includes its whole day
    assert ids(since="2025-03-01T09:30") == [2, 3, 4]  # no zone: UTC
    assert ids(since="2025-03-01T09:30+01:00", until="2025-03-02T08:00:00Z") == [1, 2]  # zones honoured
    assert ids(limit=2) == [3, 4]  # the newest two, still oldest first
    assert list_rows(timed.meta, limit=1)[0]["detail"] == {}


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AIRLOCK_HOME": str(home)}
    return subprocess.run([str(AIRLOCK), *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_verify_exit_codes_and_messages(log):
    home = log.settings.home
    ok = _cli(home, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert f"audit log intact: 5 rows, head hash {verify(log.meta).head_hash}" in ok.stdout
    assert json.loads(_cli(home, "audit", "verify", "--json").stdout)["ok"] is True

    _tamper(log.settings.db_path, "UPDATE audit SET actor = 'os:mallory' WHERE id = 2")
    _tamper(log.settings.db_path, "DELETE FROM audit WHERE id = 4")
    bad = _cli(home, "audit", "verify")
    assert bad.returncode == 5
    assert "tampered with: 2 problems" in bad.stderr
    assert bad.stderr.index("row 2 was edited") < bad.stderr.index("row 4 was deleted")
    as_json = _cli(home, "audit", "verify", "--json")
    assert as_json.returncode == 5
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and [(p["kind"], p["id"]) for p in report["problems"]] == [("edited", 2), ("deleted", 4)]


def test_cli_verify_head(log):
    head = verify(log.meta).head_hash
    assert _cli(log.settings.home, "audit", "verify", "--head", head).returncode == 0
    stale = _cli(log.settings.home, "audit", "verify", "--head", "a" * 64)
    assert stale.returncode == 5 and "no row's hash" in stale.stderr


def test_cli_list_jsonl_filters(timed, tmp_path):
    home = timed.settings.home

    def listed(*args: str) -> list[dict]:
        done = _cli(home, "audit", "list", "--jsonl", *args)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    assert [r["id"] for r in listed()] == [1, 2, 3, 4]
    assert [r["id"] for r in listed("--actor", "os:alice")] == [1, 3]
    assert [r["id"] for r in listed("--action", "apikey.", "--since", "2025-03-02")] == [3]
    assert [r["id"] for r in listed("--until", "2025-03-01T12:00")] == [1]
    assert {"id", "at", "actor", "action", "subject", "detail", "prev_hash", "hash"} == set(listed()[0])
    out = tmp_path / "export.jsonl"
    assert _cli(home, "audit", "list", "--output", str(out), "--actor", "worker").returncode == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [4]
    table = _cli(home, "audit", "list", "--limit", "1")
    assert "alias.switched" in table.stdout and "apikey.create" not in table.stdout
    unwritable = _cli(home, "audit", "list", "--output", str(tmp_path / "no-such-dir" / "x.jsonl"))
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr
    bad = _cli(home, "audit", "list", "--since", "yesterday")
    assert bad.returncode == 2 and "not an ISO date" in bad.stderr


def test_cli_changes_are_recorded_under_the_os_user(settings):
    assert _cli(settings.home, "apikey", "create", "--name", "reports").returncode == 0
    done = _cli(settings.home, "audit", "list", "--jsonl", "--action", "apikey.create")
    assert [r["actor"] for r in map(json.loads, done.stdout.splitlines())] == [f"os:{getpass.getuser()}"]
