"""Backup and restore on real homes (real SQLite, the real folder store, real key files): a round
trip keeps every key, row and blob; a backup taken while another process writes is consistent; a
backup with any change is refused naming what changed, and nothing is written; a home in use or
holding data is never overwritten."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airlock.access.keys import create_key, list_keys
from airlock.backup.service import create_backup, read_manifest, restore_backup
from airlock.config import Settings
from airlock.context import Airlock
from airlock.errors import IntegrityFailure, InvalidInput, NotReady
from airlock.meta.audit import verify as verify_audit
from airlock.trust.keys import ensure_appliance_key, public_key_id


@pytest.fixture
def source(airlock: Airlock, tmp_path: Path) -> Airlock:
    """A home with keys, an API key, audit rows, a stored blob under a reference and a pinned root."""
    ensure_appliance_key(airlock.settings)
    create_key(airlock.meta, "app", role="trainer", actor="test")
    digest = airlock.store.put_bytes(b"adapter weights" * 1000)
    airlock.store.set_ref("adapters/a1", digest)
    trust = airlock.settings.home / "trust"
    trust.mkdir()
    (trust / "root.json").write_text('{"signed": {"version": 1}}')
    return airlock


def backup_of(source: Airlock, out: Path) -> dict:
    return create_backup(source.settings, out, trust_dir=source.settings.home / "trust", actor="test")


def restore_into(backup: Path, home: Path, **kw) -> dict:
    settings = Settings(home=home)
    return restore_backup(settings, backup, trust_dir=home / "trust", actor="test", **kw)


def test_a_round_trip_keeps_keys_rows_blobs_and_the_trust_root(source: Airlock, tmp_path: Path) -> None:
    manifest = backup_of(source, tmp_path / "bk")
    assert {"airlock.db", "keys/appliance.key", "trust/root.json"} <= set(manifest["files"])
    assert oct((tmp_path / "bk" / "keys" / "appliance.key").stat().st_mode & 0o777) == "0o600"
    done = restore_into(tmp_path / "bk", tmp_path / "restored")
    restored = Airlock.open(Settings(home=tmp_path / "restored"))
    assert [k["name"] for k in list_keys(restored.meta)] == ["app"]
    assert restored.store.get_bytes(restored.store.get_ref("adapters/a1")) == b"adapter weights" * 1000
    assert public_key_id(ensure_appliance_key(restored.settings)) == public_key_id(ensure_appliance_key(source.settings))
    assert (tmp_path / "restored" / "trust" / "root.json").read_text() == '{"signed": {"version": 1}}'
    report = verify_audit(restored.meta, head=manifest["audit_head"])
    assert report.ok, report.problems
    actions = [r["action"] for r in restored.meta.query("SELECT action FROM audit ORDER BY id")]
    assert actions[-1] == "backup.restore"
    assert done["moved_aside"] is None


WRITER = """
import sys, time
from airlock.access.keys import create_key
from airlock.meta import open_meta
meta = open_meta(__import__("pathlib").Path(sys.argv[1]))
print("writing", flush=True)
for i in range(100000):
    create_key(meta, f"k{i}", actor="writer")
"""


def test_a_backup_taken_while_another_process_writes_is_consistent(source: Airlock, tmp_path: Path) -> None:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(source.settings.db_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        time.sleep(0.5)
        manifest = backup_of(source, tmp_path / "bk")
    finally:
        writer.kill()
        writer.wait()
    restore_into(tmp_path / "bk", tmp_path / "restored")
    restored = Airlock.open(Settings(home=tmp_path / "restored"))
    assert verify_audit(restored.meta, head=manifest["audit_head"]).ok
    keys = len(list_keys(restored.meta))
    assert 1 < keys < len(list_keys(source.meta)) + 1  # a snapshot in the middle of the writes


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("change", ["flip-key", "flip-blob", "flip-db", "add", "remove", "link"])
def test_a_changed_backup_is_refused_naming_what_changed_and_nothing_is_written(
        source: Airlock, tmp_path: Path, change: str) -> None:
    manifest = backup_of(source, tmp_path / "bk")
    bk = tmp_path / "bk"
    blob = next(rel for rel in manifest["files"] if rel.startswith("store/blobs/"))
    named = {"flip-key": "keys/appliance.key", "flip-blob": blob, "flip-db": "airlock.db",
             "add": "keys/extra.key", "remove": "keys/appliance.key", "link": "keys/evil"}[change]
    if change.startswith("flip"):
        flip(bk / named, 100)
    elif change == "add":
        (bk / named).write_text("x")
    elif change == "remove":
        (bk / named).unlink()
    else:
        os.symlink("/etc/shadow", bk / named)
    with pytest.raises(IntegrityFailure) as caught:
        restore_into(bk, tmp_path / "restored")
    assert named in str(caught.value) and "nothing was restored" in str(caught.value)
    assert not (tmp_path / "restored").exists()
    assert [p.name for p in tmp_path.iterdir() if "restoring" in p.name] == []


def test_an_audit_row_edited_with_the_manifest_recomputed_is_refused(source: Airlock, tmp_path: Path) -> None:
    """Someone who edits the database and rewrites backup.json to match is caught by the audit chain."""
    import json

    from airlock.backup.service import MANIFEST, _listing

    backup_of(source, tmp_path / "bk")
    bk = tmp_path / "bk"
    conn = sqlite3.connect(bk / "airlock.db")
    with conn:
        conn.execute("UPDATE audit SET actor = 'someone-else' WHERE id = 1")
    conn.close()
    manifest = read_manifest(bk)
    manifest["files"] = _listing(bk)
    (bk / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IntegrityFailure, match=r"airlock\.db: audit log: row 1"):
        restore_into(bk, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


def test_a_home_with_data_is_refused_or_moved_aside_never_overwritten(source: Airlock, tmp_path: Path) -> None:
    backup_of(source, tmp_path / "bk")
    home = tmp_path / "home2"
    home.mkdir()
    (home / "airlock.db").write_text("older data")
    with pytest.raises(InvalidInput, match="--replace"):
        restore_into(tmp_path / "bk", home)
    assert (home / "airlock.db").read_text() == "older data"
    done = restore_into(tmp_path / "bk", home, replace=True)
    assert Path(done["moved_aside"]).joinpath("airlock.db").read_text() == "older data"
    assert list_keys(Airlock.open(Settings(home=home)).meta)


def test_a_restore_onto_a_running_appliance_is_refused(source: Airlock, tmp_path: Path) -> None:
    backup_of(source, tmp_path / "bk")
    home = tmp_path / "live"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from airlock.config import Settings; from airlock.home import HomeLock; "
        "lock = HomeLock(Settings(home=sys.argv[1])); lock.acquire(); print('held', flush=True); time.sleep(60)"),
        str(home)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(NotReady, match=f"pid {holder.pid}"):
            restore_into(tmp_path / "bk", home, replace=True)
    finally:
        holder.kill()
        holder.wait()
    assert not (home / "airlock.db").exists()


def test_another_pinned_root_is_never_replaced_by_a_restore(source: Airlock, tmp_path: Path) -> None:
    backup_of(source, tmp_path / "bk")
    home = tmp_path / "restored"
    home.mkdir()
    (home / "trust").mkdir()
    (home / "trust" / "root.json").write_text('{"signed": {"version": 7}}')
    settings = Settings(home=tmp_path / "fresh")
    with pytest.raises(IntegrityFailure, match="only\\s+through rotation"):
        restore_backup(settings, tmp_path / "bk", trust_dir=home / "trust", actor="test")
    assert not (tmp_path / "fresh").exists()
    assert (home / "trust" / "root.json").read_text() == '{"signed": {"version": 7}}'


def test_a_backup_goes_only_into_an_empty_folder(source: Airlock, tmp_path: Path) -> None:
    (tmp_path / "bk").mkdir()
    (tmp_path / "bk" / "old").write_text("keep me")
    with pytest.raises(InvalidInput, match="not empty"):
        backup_of(source, tmp_path / "bk")
    assert (tmp_path / "bk" / "old").read_text() == "keep me"
