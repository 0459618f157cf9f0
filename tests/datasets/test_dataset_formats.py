"""ShareGPT and Alpaca files: converted to chat messages on import, every broken record named by
line and field, and nothing stored when any record is broken."""

from __future__ import annotations

import json

import pytest

from airlock.datasets import (ALPACA, OPERATOR_READER, SHAREGPT, add_dataset, list_datasets, load_records,
                              validate_dataset)
from airlock.errors import InvalidInput


def write(tmp_path, *records) -> object:
    path = tmp_path / "data.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def refused(airlock, path) -> list[str]:
    """The problems of adding `path`, after checking that nothing was stored."""
    with pytest.raises(InvalidInput) as info:
        add_dataset(airlock, path, actor="os:test")
    assert list_datasets(airlock, reader=OPERATOR_READER) == []
    return info.value.problems


def sharegpt(*turns) -> dict:
    return {"conversations": [{"from": f, "value": v} for f, v in turns]}


def test_sharegpt_becomes_chat_with_every_turn(tmp_path):
    path = write(tmp_path, sharegpt(("system", "Be brief."), ("human", "Hi"), ("gpt", "Hello."),
                                    ("human", "And?"), ("gpt", "Bye.")),
                 {"conversations": [{"from": "user", "value": "2+2?"}, {"from": "assistant", "value": "4"}],
                  "id": "x"})
    result = validate_dataset(path)
    assert result.format == SHAREGPT
    assert result.records == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And?"},
         {"role": "assistant", "content": "Bye."}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    ]


def test_alpaca_becomes_chat(tmp_path):
    path = write(tmp_path, {"instruction": "Translate.", "input": "chat", "output": "cat"},
                 {"instruction": "Say hi.", "input": "", "output": "Hi.", "system": "Be kind."})
    result = validate_dataset(path)
    assert result.format == ALPACA
    assert result.records == [
        [{"role": "user", "content": "Translate.\n\nchat"}, {"role": "assistant", "content": "cat"}],
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Say hi."},
         {"role": "assistant", "content": "Hi."}],
    ]


def test_every_broken_sharegpt_record_is_named_and_nothing_is_stored(airlock, tmp_path):
    path = write(tmp_path,
                 sharegpt(("human", "Hi"), ("gpt", "Hello.")),
                 sharegpt(("human", "Hi"), ("bot", "Hello.")),
                 {"conversations": "hello"},
                 sharegpt(("human", "Only a question")),
                 {"conversations": [{"from": "gpt"}, {"value": "x"}, 3]},
                 '{"conversations": [',
                 {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    assert refused(airlock, path) == [
        "data.jsonl:2: conversations[1].from: 'bot' is not one of system, human, user, gpt, assistant",
        "data.jsonl:3: conversations: expected an array of turns, got string",
        "data.jsonl:4: conversations: no gpt turn (nothing for the model to learn to answer)",
        "data.jsonl:5: conversations[0].value: missing",
        "data.jsonl:5: conversations[1].from: missing",
        "data.jsonl:5: conversations[2]: expected an object, got number",
        "data.jsonl:6: invalid JSON: Expecting value (column 20)",
        "data.jsonl:7: a chat (messages) record in a file that is ShareGPT (conversations) (set by line 1); "
        "one file holds one format",
    ]


def test_every_broken_alpaca_record_is_named_and_nothing_is_stored(airlock, tmp_path):
    path = write(tmp_path,
                 {"instruction": "Say hi.", "output": "Hi."},
                 {"instruction": "", "output": "Hi."},
                 {"instruction": "Say hi.", "input": 4, "output": "Hi."},
                 {"instruction": "Say hi."},
                 {"output": ["Hi."], "instruction": "x", "system": None})
    assert refused(airlock, path) == [
        "data.jsonl:2: instruction: empty",
        "data.jsonl:3: input: expected a string, got number",
        "data.jsonl:4: output: missing",
        "data.jsonl:5: output: expected a string, got array",
        "data.jsonl:5: system: expected a string, got null",
    ]


def test_a_stored_sharegpt_dataset_trains_as_chat(airlock, tmp_path):
    path = write(tmp_path, sharegpt(("human", "Hi"), ("gpt", "Hello.")))
    row = add_dataset(airlock, path, actor="os:test")
    assert row["format"] == SHAREGPT
    assert load_records(airlock, row["digest"]) == [[{"role": "user", "content": "Hi"},
                                                     {"role": "assistant", "content": "Hello."}]]
