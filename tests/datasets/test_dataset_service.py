"""Adding, listing, finding and loading datasets on a real appliance home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonl_helpers import chat, qa

from airlock.datasets import OPERATOR_READER, add_dataset, get_dataset, list_datasets, load_records

OP = {"reader": OPERATOR_READER}  # the CLI's reader: the operator's namespace, every owner's datasets
from airlock.errors import IntegrityFailure, InvalidInput, NotFound


def store_files(airlock) -> list[Path]:
    root = Path(airlock.settings.store_dir)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def table_count(airlock, table: str) -> int:
    return airlock.meta.one(f"SELECT COUNT(*) AS n FROM {table}")["n"]


def test_add_stores_the_raw_file_and_a_row(airlock, write_jsonl):
    path = write_jsonl(chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello.")), qa())
    row = add_dataset(airlock, path, name="greetings")
    assert row["name"] == "greetings"
    assert row["format"] == "chat"
    assert row["records"] == 2
    assert row["source"] == "data.jsonl"
    assert airlock.store.get_bytes(row["digest"]) == path.read_bytes()
    assert get_dataset(airlock, row["digest"], **OP) == row
    audit = airlock.meta.one("SELECT * FROM audit WHERE action = 'dataset.add'")
    assert audit["subject"] == row["digest"]
    assert json.loads(audit["detail_json"])["records"] == 2


def test_adding_the_same_bytes_again_changes_nothing(airlock, write_jsonl):
    path = write_jsonl(qa())
    first = add_dataset(airlock, path, name="first")
    blobs = store_files(airlock)
    again = add_dataset(airlock, path, name="second")
    assert again == first
    assert table_count(airlock, "datasets") == 1
    assert table_count(airlock, "audit") == 1
    assert store_files(airlock) == blobs


def test_default_name_is_the_file_stem(airlock, write_jsonl):
    row = add_dataset(airlock, write_jsonl(qa(), name="support-faq.jsonl"))
    assert row["name"] == "support-faq"
    assert get_dataset(airlock, "support-faq", **OP)["digest"] == row["digest"]


def test_an_invalid_dataset_stores_nothing(airlock, write_jsonl):
    add_dataset(airlock, write_jsonl(qa(), name="good.jsonl"))
    blobs, rows, audits = store_files(airlock), table_count(airlock, "datasets"), table_count(airlock, "audit")
    bad = write_jsonl(qa(), {"messages": [{"role": "bot", "content": "x"}]}, "{", name="bad.jsonl")
    with pytest.raises(InvalidInput) as info:
        add_dataset(airlock, bad)
    assert info.value.problems[0].startswith("bad.jsonl:2: messages[0].role")
    assert len(info.value.problems) == 2
    assert store_files(airlock) == blobs
    assert table_count(airlock, "datasets") == rows
    assert table_count(airlock, "audit") == audits


def test_a_too_long_dataset_stores_nothing(airlock, write_jsonl, tokenizer):
    path = write_jsonl(qa(), qa("hello world " * 50, "ok"))
    blobs = store_files(airlock)
    with pytest.raises(InvalidInput, match="1 problem"):
        add_dataset(airlock, path, tokenizer=tokenizer, max_length=64)
    assert store_files(airlock) == blobs
    assert table_count(airlock, "datasets") == 0
    assert add_dataset(airlock, path, tokenizer=tokenizer, max_length=4096)["records"] == 2


@pytest.mark.parametrize("name", ["", "   ", "sha256:abc", "a\nb"])
def test_bad_names_are_refused_before_anything_is_stored(airlock, write_jsonl, name):
    with pytest.raises(InvalidInput, match="name"):
        add_dataset(airlock, write_jsonl(qa()), name=name)
    assert table_count(airlock, "datasets") == 0


def test_list_is_newest_first(airlock, write_jsonl):
    a = add_dataset(airlock, write_jsonl(qa("a?", "a"), name="a.jsonl"))
    b = add_dataset(airlock, write_jsonl({"prompt": "b?", "completion": "b"}, name="b.jsonl"))
    rows = list_datasets(airlock, **OP)
    assert [r["digest"] for r in rows] == [b["digest"], a["digest"]]
    assert rows[0]["format"] == "prompt_completion"


def test_a_reused_name_finds_the_newest(airlock, write_jsonl):
    add_dataset(airlock, write_jsonl(qa("v1?", "1"), name="v1.jsonl"), name="faq")
    newer = add_dataset(airlock, write_jsonl(qa("v2?", "2"), name="v2.jsonl"), name="faq")
    assert get_dataset(airlock, "faq", **OP)["digest"] == newer["digest"]


def test_unknown_datasets_are_not_found(airlock):
    with pytest.raises(NotFound, match="no dataset named 'nope'"):
        get_dataset(airlock, "nope", **OP)
    with pytest.raises(NotFound, match="no dataset with digest"):
        get_dataset(airlock, "sha256:" + "0" * 64, **OP)
    with pytest.raises(InvalidInput, match="not a digest"):
        get_dataset(airlock, "sha256:xyz", **OP)


def test_load_records_reads_normalised_messages_back(airlock, write_jsonl):
    row = add_dataset(airlock, write_jsonl({"prompt": "Capital of France?", "completion": "Paris."}))
    assert load_records(airlock, row["digest"]) == [
        [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]
    ]


def test_load_records_of_an_unknown_digest(airlock):
    with pytest.raises(NotFound):
        load_records(airlock, "sha256:" + "1" * 64)


def test_load_records_refuses_a_changed_blob(airlock, write_jsonl):
    row = add_dataset(airlock, write_jsonl(qa("2+2?", "4")))
    blob = airlock.store.blob_path(row["digest"])
    blob.chmod(0o600)
    blob.write_bytes(blob.read_bytes().replace(b"4", b"5"))
    with pytest.raises(IntegrityFailure):
        load_records(airlock, row["digest"])
