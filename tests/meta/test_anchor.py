"""The audit head anchored outside the database (meta/anchor.py), on real homes: every row written
by the real code, from several processes at once, gets one signed line; `check_anchors` names an
edited, forged or unreadable line, a missing anchor file, and rows rewritten after they were
anchored; the lines reach a real syslog socket; `airlock audit export` streams rows as JSON lines;
the CLI's audit actor is the real uid's account, whatever USER says."""

from __future__ import annotations

import base64
import json
import os
import pwd
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from airlock.config import Settings
from airlock.context import Airlock
from airlock.meta.anchor import read_anchors
from airlock.meta.audit import check_anchors, verify
from airlock.meta.chain import chain_unhashed

AIRLOCK = Path(sys.executable).parent / "airlock"


@pytest.fixture
def log(airlock: Airlock) -> Airlock:
    for n in range(1, 6):
        airlock.meta.audit("os:alice", "apikey.create", f"k{n}", n=n)
    return airlock


def lines(airlock: Airlock) -> list[dict]:
    return [json.loads(line) for line in airlock.settings.audit_anchor_path.read_text().splitlines()]


def kinds(airlock: Airlock) -> list[tuple[str, int | None]]:
    return [(p.kind, p.id) for p in check_anchors(airlock.meta, airlock.meta.anchors)]


def test_every_row_is_anchored_with_a_signature_of_the_appliance_key(log: Airlock) -> None:
    rows = log.meta.query("SELECT id, hash FROM audit ORDER BY id")
    assert [(a["id"], a["hash"]) for a in lines(log)] == [(r["id"], r["hash"]) for r in rows]
    assert oct(log.settings.audit_anchor_path.stat().st_mode & 0o777) == "0o600"
    public = log.meta.anchors.key().public_key()
    assert all(not isinstance(a, str) for a in read_anchors(log.settings.audit_anchor_path, public))
    assert kinds(log) == []


WRITER = """
import sys
from airlock.config import Settings
from airlock.context import Airlock
meta = Airlock.open(Settings(home=sys.argv[1])).meta
for i in range(60):
    meta.audit(sys.argv[2], "test.write", str(i))
"""


def test_writers_in_separate_processes_anchor_every_row_in_whole_lines(airlock: Airlock) -> None:
    home = str(airlock.settings.home)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, home, f"w{n}"]) for n in range(3)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    anchored = sorted(a["id"] for a in lines(airlock))  # every line parses: none was torn
    assert anchored == list(range(1, 181))
    assert kinds(airlock) == [] and verify(airlock.meta).ok


def rewrite_line(airlock: Airlock, number: int, **changes) -> None:
    path = airlock.settings.audit_anchor_path
    entries = path.read_text().splitlines()
    entries[number - 1] = json.dumps({**json.loads(entries[number - 1]), **changes})
    path.write_text("\n".join(entries) + "\n")


def test_an_edited_forged_or_unreadable_anchor_line_is_named(log: Airlock) -> None:
    path, own_key = log.settings.audit_anchor_path, lines(log)[0]["key"]
    rewrite_line(log, 2, hash="0" * 64)
    rewrite_line(log, 3, sig=base64.b64encode(os.urandom(64)).decode())
    rewrite_line(log, 4, key="ffffffffffffffff")
    with path.open("a") as f:
        f.write("not json\n")
    problems = [p.message for p in check_anchors(log.meta, log.meta.anchors)]
    assert problems == [f"{path} line 2: its signature does not hold for row 2: the line was edited or forged",
                        f"{path} line 3: its signature does not hold for row 3: the line was edited or forged",
                        f"{path} line 4: signed by key ffffffffffffffff, not by this appliance's key "
                        f"{own_key}",
                        f"{path} line 6: not an anchor (unreadable JSON or a missing field): the file was edited"]


def test_a_missing_anchor_file_is_reported_not_passed(log: Airlock) -> None:
    log.settings.audit_anchor_path.unlink()
    assert kinds(log) == [("anchor", None)]
    assert "no anchor file, yet the log holds 5 rows" in check_anchors(log.meta, log.meta.anchors)[0].message


def test_a_log_rewritten_as_a_whole_is_caught_by_its_anchors(log: Airlock) -> None:
    conn = sqlite3.connect(log.settings.db_path)
    with conn:  # the edit, then every hash recomputed with airlock's own chaining code
        conn.execute("UPDATE audit SET actor = 'os:mallory', hash = NULL WHERE id = 3")
        conn.execute("UPDATE audit SET hash = NULL")
        chain_unhashed(conn)
    conn.close()
    assert verify(log.meta).ok  # every hash recomputed: the chain alone cannot tell
    assert kinds(log) == [("edited", 3), ("edited", 4), ("edited", 5)]


def test_anchor_lines_reach_a_syslog_socket(settings: Settings) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    try:
        configured = settings.model_copy(update={"audit_syslog": f"127.0.0.1:{receiver.getsockname()[1]}"})
        airlock = Airlock.open(configured)
        airlock.meta.audit("os:alice", "apikey.create", "k1")
        message = receiver.recv(4096).decode()
    finally:
        receiver.close()
    assert "airlock-audit-anchor: " in message
    sent = json.loads(message.split("airlock-audit-anchor: ", 1)[1].rstrip("\x00"))
    assert sent == lines(airlock)[0]


def cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(AIRLOCK), *args], env={**os.environ, "AIRLOCK_HOME": str(home), **env},
                          capture_output=True, text=True, timeout=120)


def test_export_writes_rows_as_json_lines_since_an_id_or_a_time(log: Airlock, tmp_path: Path) -> None:
    home = log.settings.home
    since_id = cli(home, "audit", "export", "--since", "4")
    assert since_id.returncode == 0, since_id.stderr
    exported = [json.loads(line) for line in since_id.stdout.splitlines()]
    assert [r["id"] for r in exported] == [4, 5] and exported[0]["detail"] == {"n": 4}
    assert exported[1]["hash"] == log.meta.one("SELECT hash FROM audit WHERE id = 5")["hash"]
    third = log.meta.one("SELECT at FROM audit WHERE id = 3")["at"]
    out = tmp_path / "siem.jsonl"
    assert cli(home, "audit", "export", "--since", third, "--output", str(out)).returncode == 0
    expected = [r["id"] for r in log.meta.query("SELECT id FROM audit WHERE at >= ? ORDER BY id", (third,))]
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == expected and 3 in expected
    bad = cli(home, "audit", "export", "--since", "last tuesday", "--output", str(tmp_path / "never.jsonl"))
    assert bad.returncode == 2 and "not an ISO date" in bad.stderr and not (tmp_path / "never.jsonl").exists()


def test_the_cli_actor_is_the_real_uids_account_not_USER(settings: Settings) -> None:
    done = cli(settings.home, "apikey", "create", "--name", "reports", USER="someone-else", LOGNAME="someone-else")
    assert done.returncode == 0, done.stderr
    listed = cli(settings.home, "audit", "list", "--jsonl", "--action", "apikey.create")
    assert [json.loads(line)["actor"] for line in listed.stdout.splitlines()] == [
        f"os:{pwd.getpwuid(os.getuid()).pw_name}"]
