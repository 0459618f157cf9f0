"""Validation rules: each problem kind names file:line and field; all problems come at once."""

from __future__ import annotations

import copy
import hashlib

import pytest
from jsonl_helpers import chat, qa

from airlock.datasets import CHAT, PROMPT_COMPLETION, validate_dataset
from airlock.datasets.validate import count_tokens
from airlock.errors import InvalidInput, NotFound


def problems_of(path, **kwargs) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        validate_dataset(path, **kwargs)
    return info.value.problems


def test_valid_chat_file(write_jsonl):
    path = write_jsonl(
        chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello.")),
        {**qa("2+2?", "4"), "id": 7, "metadata": {"source": "faq"}},  # unknown keys are ignored
    )
    result = validate_dataset(path)
    assert result.format == CHAT
    assert result.lines == 2
    assert result.source == "data.jsonl"
    assert result.digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.size == len(path.read_bytes())
    assert result.records == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    ]


def test_valid_prompt_completion_file_becomes_user_and_assistant(write_jsonl):
    path = write_jsonl({"prompt": "Capital of France?", "completion": "Paris."},
                       {"prompt": "2+2?", "completion": "4", "weight": 1})
    result = validate_dataset(path)
    assert result.format == PROMPT_COMPLETION
    assert result.records[0] == [{"role": "user", "content": "Capital of France?"},
                                 {"role": "assistant", "content": "Paris."}]
    assert len(result.records) == 2


def test_blank_lines_are_skipped_but_still_counted(write_jsonl):
    path = write_jsonl("", qa(), "   ", "\t", qa(), "")
    result = validate_dataset(path)
    assert len(result.records) == 2
    assert result.lines == 6


def test_crlf_line_endings_and_a_byte_order_mark_are_accepted(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\r\n{"prompt": "c", "completion": "d"}\r\n')
    assert len(validate_dataset(path).records) == 2


def test_last_line_without_newline(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}')
    result = validate_dataset(path)
    assert (len(result.records), result.lines) == (2, 2)


BAD_LINES = [
    pytest.param(b'{"prompt": "caf\xe9", "completion": "x"}', "not valid UTF-8 (byte 0xe9 at column 16)",
                 id="not-utf8"),
    pytest.param('{"prompt": "a", "completion": "b",}', "invalid JSON: Expecting property name enclosed in "
                 "double quotes (column 35)", id="invalid-json"),
    pytest.param('{"prompt": NaN, "completion": "b"}', "invalid JSON: NaN is not valid JSON", id="nan"),
    pytest.param("[1, 2]", "expected a JSON object, got array", id="array"),
    pytest.param('"just text"', "expected a JSON object, got string", id="string"),
    pytest.param("null", "expected a JSON object, got null", id="null"),
    pytest.param({"text": "hello"}, "messages: missing", id="missing-messages"),
    pytest.param({"messages": "hi"}, "messages: expected an array of messages, got string", id="messages-not-list"),
    pytest.param({"messages": []}, "messages: empty array (a record needs at least one user and one "
                 "assistant message)", id="messages-empty"),
    pytest.param({"messages": ["hi", {"role": "assistant", "content": "x"}]},
                 "messages[0]: expected an object, got string", id="message-not-object"),
    pytest.param({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                               {"role": "bot", "content": "c"}]},
                 "messages[2].role: 'bot' is not one of system, user, assistant", id="bad-role"),
    pytest.param({"messages": [{"role": 1, "content": "a"}, {"role": "assistant", "content": "b"}]},
                 "messages[0].role: number is not one of system, user, assistant", id="role-not-string"),
    pytest.param({"messages": [{"content": "a"}, {"role": "assistant", "content": "b"}]},
                 "messages[0].role: missing", id="missing-role"),
    pytest.param({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]},
                 "messages[1].content: empty", id="empty-content"),
    pytest.param({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 42}]},
                 "messages[1].content: expected a string, got number", id="content-not-string"),
    pytest.param({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": None}]},
                 "messages[1].content: expected a string, got null", id="content-null"),
    pytest.param({"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]},
                 "messages[0].content: missing", id="missing-content"),
    pytest.param({"messages": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]},
                 "messages: no assistant message (nothing for the model to learn to answer)", id="no-assistant"),
    pytest.param({"prompt": "a", "completion": "b"}, "a prompt/completion record in a file that is chat "
                 "(messages) (set by line 1); one file holds one format", id="format-change"),
]


@pytest.mark.parametrize("bad, expected", BAD_LINES)
def test_each_problem_names_file_line_and_field(write_jsonl, bad, expected):
    path = write_jsonl(qa(), "", bad, qa())
    assert problems_of(path) == [f"data.jsonl:3: {expected}"]


PC_BAD_LINES = [
    pytest.param({"prompt": "a"}, ["completion: missing"], id="missing-completion"),
    pytest.param({"prompt": "", "completion": "b"}, ["prompt: empty"], id="empty-prompt"),
    pytest.param({"prompt": ["a"], "completion": 3}, ["prompt: expected a string, got array",
                                                      "completion: expected a string, got number"], id="types"),
    pytest.param({"id": 1}, ["prompt: missing", "completion: missing"], id="neither-field"),
    pytest.param(qa(), ["a chat (messages) record in a file that is prompt/completion (set by line 1); "
                        "one file holds one format"], id="format-change"),
]


@pytest.mark.parametrize("bad, expected", PC_BAD_LINES)
def test_prompt_completion_problems(write_jsonl, bad, expected):
    path = write_jsonl({"prompt": "q", "completion": "a"}, bad)
    assert problems_of(path) == [f"data.jsonl:2: {e}" for e in expected]


def test_a_first_record_in_no_known_format(write_jsonl):
    path = write_jsonl({"text": "hello"}, qa())
    assert problems_of(path) == [
        "data.jsonl:1: no 'messages' (chat), 'conversations' (ShareGPT), 'instruction'/'output' (Alpaca) "
        "or 'prompt'/'completion' field: not a record of a known format"
    ]


@pytest.mark.parametrize("lines", [(), ("", "  ", "")], ids=["empty", "only-blank-lines"])
def test_empty_file(write_jsonl, lines):
    path = write_jsonl(*lines, name="empty.jsonl")
    assert problems_of(path) == ["empty.jsonl: empty file (no records; blank lines are skipped)"]


def test_every_problem_is_reported_at_once(write_jsonl):
    path = write_jsonl(
        qa(),
        "{not json",
        {"messages": [{"role": "bot", "content": ""}, {"role": "assistant", "content": "b"}]},
        b"\xff\xfe",
        qa(),
        {"prompt": "x", "completion": "y"},
    )
    with pytest.raises(InvalidInput) as info:
        validate_dataset(path)
    assert info.value.message == "data.jsonl is not a valid dataset: 5 problems"
    assert info.value.problems == [
        "data.jsonl:2: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        "data.jsonl:3: messages[0].role: 'bot' is not one of system, user, assistant",
        "data.jsonl:3: messages[0].content: empty",
        "data.jsonl:4: not valid UTF-8 (byte 0xff at column 1)",
        "data.jsonl:6: a prompt/completion record in a file that is chat (messages) (set by line 1); "
        "one file holds one format",
    ]
    assert "data.jsonl:3: messages[0].role" in str(info.value)


def test_problem_list_is_capped(write_jsonl):
    path = write_jsonl(qa(), *(["[]"] * 150))
    with pytest.raises(InvalidInput) as info:
        validate_dataset(path)
    problems = info.value.problems
    assert info.value.message == "data.jsonl is not a valid dataset: 150 problems"
    assert len(problems) == 101
    assert problems[0] == "data.jsonl:2: expected a JSON object, got array"
    assert problems[99] == "data.jsonl:101: expected a JSON object, got array"
    assert problems[100] == "and 50 more problems"


def test_records_longer_than_the_context_are_refused(write_jsonl, tokenizer):
    short, long = qa("hi", "hello"), qa("hello world " * 40, "the quick brown fox")
    n = count_tokens(tokenizer, long["messages"])
    assert n > 32 >= count_tokens(tokenizer, short["messages"])
    path = write_jsonl(short, long, short)
    assert problems_of(path, tokenizer=tokenizer, max_length=32) == [
        f"data.jsonl:2: messages: {n} tokens, longer than the model's context of 32 tokens"
    ]
    # Without a limit the same file is fine.
    assert len(validate_dataset(path, tokenizer=tokenizer).records) == 3


def test_prompt_completion_length_counts_the_chat_template(write_jsonl, tokenizer):
    path = write_jsonl({"prompt": "hi", "completion": "ok"}, {"prompt": "fox " * 30, "completion": "dog"})
    n = count_tokens(tokenizer, [{"role": "user", "content": "fox " * 30}, {"role": "assistant", "content": "dog"}])
    assert problems_of(path, tokenizer=tokenizer, max_length=24) == [
        f"data.jsonl:2: prompt+completion: {n} tokens, longer than the model's context of 24 tokens"
    ]


def test_max_length_needs_a_tokenizer(write_jsonl):
    with pytest.raises(InvalidInput, match="needs the model's tokenizer"):
        validate_dataset(write_jsonl(qa()), max_length=10)


def test_missing_file(tmp_path):
    with pytest.raises(NotFound):
        validate_dataset(tmp_path / "nope.jsonl")


def test_a_record_the_chat_template_refuses(write_jsonl, tokenizer):
    strict = copy.copy(tokenizer)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('system messages are not supported') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    path = write_jsonl(qa(), chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello.")))
    assert problems_of(path, tokenizer=strict) == [
        "data.jsonl:2: messages: the model's chat template rejected this record: "
        "system messages are not supported"
    ]


# Line by line, in bounded memory ------------------------------------------------------------------


def test_a_record_at_the_line_limit_passes_and_one_byte_more_is_refused_by_line(tmp_path):
    from airlock.datasets.validate import validate_bytes, validate_upload

    record = b'{"prompt": "q", "completion": "' + b"a" * 100 + b'"}'
    first = b'{"prompt": "p", "completion": "c"}\n'
    ok = validate_bytes(first + record + b"\n", source="d", max_record_bytes=len(record))
    assert (ok.count, ok.lines) == (2, 2)

    path = tmp_path / "d.jsonl"
    path.write_bytes(first + record + b"x\n" + first)
    with pytest.raises(InvalidInput) as info:
        validate_upload(path, source="d", max_record_bytes=len(record))
    assert info.value.problems == [f"d:2: a record of more than {len(record)} bytes, longer than any record a "
                                   "model's context holds; split the document"]


def test_an_upload_is_validated_without_keeping_its_records_and_hashes_every_byte(tmp_path):
    from airlock.datasets.validate import validate_upload

    data = b"".join(b'{"prompt": "q%d", "completion": "a"}\r\n\n' % i for i in range(50))
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    result = validate_upload(path, source="d")
    assert (result.count, result.records, result.lines, result.size) == (50, [], 100, len(data))
    assert result.digest == "sha256:" + hashlib.sha256(data).hexdigest()
