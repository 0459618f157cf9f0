"""Owners, namespaces and shares of datasets on a real appliance home, through the service and
through `airlock datasets ...` and `airlock apikey create --holder`; and the migration that gives
existing datasets and keys their owners and holders."""

from __future__ import annotations

import json
import sqlite3

import pytest
from jsonl_helpers import qa
from typer.testing import CliRunner

from airlock.access.keys import create_key, get_key
from airlock.cli.main import app
from airlock.datasets import OPERATOR_READER, Reader, add_dataset, get_dataset, list_datasets
from airlock.datasets.service import add_dataset_upload
from airlock.datasets.sharing import grantees, share_dataset
from airlock.errors import InvalidInput, NotFound
from airlock.meta import open_meta
from airlock.meta.migrations import MIGRATIONS

runner = CliRunner()
BODY = (json.dumps(qa("same?", "bytes")) + "\n").encode()


def test_the_same_bytes_of_two_owners_are_two_datasets_and_one_blob(airlock):
    alice = add_dataset_upload(airlock, BODY, name="faq", owner="alice", actor="key:a")
    bob = add_dataset_upload(airlock, BODY, name="answers", owner="bob", actor="key:b")
    assert alice["digest"] == bob["digest"] and (alice["owner"], bob["owner"]) == ("alice", "bob")
    assert airlock.meta.one("SELECT COUNT(*) AS n FROM datasets")["n"] == 2
    assert len([p for p in airlock.settings.store_dir.rglob("*") if p.is_file()]) == 1
    # Each reads its own row by the shared digest; neither sees the other's name.
    assert get_dataset(airlock, alice["digest"], reader=Reader("bob"))["name"] == "answers"
    with pytest.raises(NotFound, match="no dataset named 'faq'"):
        get_dataset(airlock, "faq", reader=Reader("bob"))
    assert [r["ref"] for r in list_datasets(airlock, reader=Reader("alice"))] == ["faq"]


def test_refs_name_the_own_namespace_an_owner_or_an_older_dataset_by_digest(airlock, write_jsonl):
    old = add_dataset(airlock, write_jsonl(qa("v1?", "1"), name="v1.jsonl"), name="faq")
    new = add_dataset(airlock, write_jsonl(qa("v2?", "2"), name="v2.jsonl"), name="faq")
    other = add_dataset_upload(airlock, BODY, name="faq", owner="bob", actor="key:b")
    refs = {r["digest"]: r["ref"] for r in list_datasets(airlock, reader=OPERATOR_READER)}
    assert refs == {new["digest"]: "faq", old["digest"]: old["digest"], other["digest"]: "@bob/faq"}
    assert get_dataset(airlock, "@bob/faq", reader=OPERATOR_READER) == other
    assert [r["digest"] for r in list_datasets(airlock, reader=OPERATOR_READER, owner="bob")] == [other["digest"]]
    with pytest.raises(InvalidInput, match="@OWNER/NAME"):
        get_dataset(airlock, "@bob", reader=OPERATOR_READER)


def test_a_share_needs_a_real_holder_and_a_digest_of_two_owners_is_ambiguous(airlock):
    create_key(airlock.meta, "laptop", role="trainer", holder="carol")
    with pytest.raises(NotFound, match="no API key has this holder"):
        grantees(airlock, ["carrol"], [], False)  # a typo shares with nobody
    with pytest.raises(InvalidInput, match="--with HOLDER"):
        grantees(airlock, [], [], False)
    alice = add_dataset_upload(airlock, BODY, name="faq", owner="alice", actor="key:a")
    add_dataset_upload(airlock, BODY, name="faq", owner="bob", actor="key:b")
    with pytest.raises(InvalidInput, match="several owners hold these bytes"):
        share_dataset(airlock, alice["digest"], ["carol"], reader=OPERATOR_READER, actor="os:op")
    shared = share_dataset(airlock, "@alice/faq", ["carol"], reader=OPERATOR_READER, actor="os:op")
    assert shared["shared_with"] == ["carol"] and shared["owner"] == "alice"
    assert get_dataset(airlock, "@alice/faq", reader=Reader("carol"))["owner"] == "alice"
    with pytest.raises(NotFound):
        get_dataset(airlock, "@bob/faq", reader=Reader("carol"))


@pytest.mark.parametrize(("holder", "problem"), [("Key-abc", "own namespaces"), ("a b", "1 to 64"), ("", "1 to 64")])
def test_bad_holders_are_refused_and_create_no_key(airlock, holder, problem):
    with pytest.raises(InvalidInput, match=problem):
        create_key(airlock.meta, "k", role="trainer", holder=holder)
    assert airlock.meta.one("SELECT COUNT(*) AS n FROM api_keys")["n"] == 0


def test_the_cli_adds_for_an_owner_shares_with_a_key_and_unshares(settings, write_jsonl):
    created = runner.invoke(app, ["apikey", "create", "--name", "anna", "--role", "trainer", "--holder", "Anna",
                                  "--json"])
    assert created.exit_code == 0, created.output
    anna = json.loads(created.stdout)
    assert anna["holder"] == "anna"
    other = runner.invoke(app, ["apikey", "create", "--name", "bo", "--role", "trainer", "--json"])
    bo = json.loads(other.stdout)
    assert bo["holder"] == f"key-{bo['id']}"

    added = runner.invoke(app, ["datasets", "add", str(write_jsonl(qa())), "--name", "faq", "--owner", "anna"])
    assert added.exit_code == 0, added.output
    assert added.stdout.startswith("dataset 'faq' of anna:")
    listed = json.loads(runner.invoke(app, ["datasets", "list", "--owner", "anna", "--json"]).stdout)
    assert [(r["owner"], r["name"]) for r in listed] == [("anna", "faq")]

    shared = runner.invoke(app, ["datasets", "share", "@anna/faq", "--key", bo["id"], "--all-trainers"])
    assert shared.exit_code == 0, shared.output
    assert shared.stdout.strip().endswith(f"is shared with: all trainers, key-{bo['id']}")
    unshared = runner.invoke(app, ["datasets", "unshare", "@anna/faq", "--all-trainers", "--json"])
    assert json.loads(unshared.stdout)["shared_with"] == [f"key-{bo['id']}"]
    meta = open_meta(settings.db_path)
    audit = meta.query("SELECT actor, action FROM audit WHERE action LIKE 'dataset.%' ORDER BY id")
    assert [a["action"] for a in audit] == ["dataset.add", "dataset.share", "dataset.unshare"]
    assert all(a["actor"].startswith("os:") for a in audit)
    assert get_key(meta, anna["id"])["holder"] == "anna"

    refused = runner.invoke(app, ["datasets", "share", "@anna/faq", "--with", "nobody-here"])
    assert refused.exit_code == 3 and "no API key has this holder" in refused.stderr


def test_migration_5_gives_existing_datasets_the_holder_of_their_uploader(tmp_path):
    """A database at version 4, as a released appliance holds it: one dataset uploaded over HTTP by
    key abc, one added with the CLI; after migrating, the first is abc's, the second the operator's."""
    path = tmp_path / "meta.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    for version, sql in MIGRATIONS[:4]:
        for statement in filter(str.strip, sql.split(";")):
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations VALUES (?, '2026-01-01')", (version,))
    db.execute("INSERT INTO api_keys (id, name, key_hash, prefix, created_at, role) "
               "VALUES ('abc', 'k', 'h', 'ak-abc-', '2026-01-01', 'trainer')")
    for digest, name, at in (("sha256:" + "a" * 64, "uploaded", "2026-01-02"), ("sha256:" + "b" * 64, "host", "2026-01-03")):
        db.execute("INSERT INTO datasets VALUES (?, ?, 'chat', 1, 'upload', ?)", (digest, name, at))
    db.execute("INSERT INTO audit (at, actor, action, subject) VALUES ('2026-01-02', 'key:abc', 'dataset.add', ?)",
               ("sha256:" + "a" * 64,))
    db.execute("INSERT INTO audit (at, actor, action, subject) VALUES ('2026-01-03', 'os:root', 'dataset.add', ?)",
               ("sha256:" + "b" * 64,))
    db.commit()
    db.close()

    meta = open_meta(path)
    assert meta.schema_version() >= 5
    rows = meta.query("SELECT name, owner, digest, created_at FROM datasets ORDER BY created_at")
    assert [(r["name"], r["owner"]) for r in rows] == [("uploaded", "key-abc"), ("host", "operator")]
    assert meta.one("SELECT holder FROM api_keys WHERE id = 'abc'")["holder"] == "key-abc"
    assert meta.query("SELECT * FROM dataset_shares") == []


def test_an_adapters_lineage_names_the_dataset_as_its_runs_submitter_named_it(airlock):
    """The same bytes under two owners' names: the adapter trained by bob's run shows bob's name,
    never alice's (models are listed to every trainer; her dataset names are hers)."""
    from airlock.workflow.lineage import lineage

    key_id, _ = create_key(airlock.meta, "bob's laptop", role="trainer", holder="bob")
    alice = add_dataset_upload(airlock, BODY, name="alice-private-name", owner="alice", actor="key:a")
    add_dataset_upload(airlock, BODY, name="bobs-set", owner="bob", actor=f"key:{key_id}")
    with airlock.meta.write() as db:
        db["runs"].insert({"id": "run-1", "workflow": "w", "spec_json": "{}", "status": "succeeded",
                           "created_at": "2026-01-01", "submitted_by": f"key:{key_id}"})
        db["models"].insert({"id": "m1", "kind": "lora", "base_model": "b", "base_digest": "sha256:b",
                             "dataset_digest": alice["digest"], "tree_digest": "sha256:t", "run_id": "run-1",
                             "created_at": "2026-01-02"})
    assert lineage(airlock, "m1")["dataset"] == {"digest": alice["digest"], "name": "bobs-set", "owner": "bob",
                                                 "format": "chat", "records": 1}
