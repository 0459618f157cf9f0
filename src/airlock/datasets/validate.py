"""Validate a JSONL dataset file: every problem, each with file:line and field, reported at once.

Validation works on the raw bytes that will be stored, so what was checked is exactly what the
store holds under the digest (there is no window in which the file could change in between).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airlock.datasets.records import CHECKS, LENGTH_FIELDS, Messages, describe, detect_format, json_type
from airlock.errors import AirlockError, InvalidInput, NotFound
from airlock.store.base import sha256_bytes

# Enough to show the pattern of what is wrong; a file with 40,000 bad lines needs one fix, not
# 40,000 lines of output.
MAX_PROBLEMS = 100

UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class ValidatedDataset:
    source: str
    format: str
    records: list[Messages]
    lines: int
    digest: str
    size: int


class _Problems:
    """Counts every problem but keeps only the first `limit` messages."""

    def __init__(self, source: str, limit: int) -> None:
        self.source = source
        self.limit = limit
        self.items: list[str] = []
        self.count = 0

    def add(self, lineno: int | None, message: str) -> None:
        self.count += 1
        if len(self.items) < self.limit:
            where = self.source if lineno is None else f"{self.source}:{lineno}"
            self.items.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if not self.count:
            return
        listed = list(self.items)
        if self.count > len(listed):
            listed.append(f"and {self.count - len(listed)} more problems")
        noun = "problem" if self.count == 1 else "problems"
        raise InvalidInput(f"{self.source} is not a valid dataset: {self.count} {noun}", problems=listed)


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; other JSON readers (and the spec) do not.
    raise ValueError(f"{name} is not valid JSON")


_UNREADABLE = object()  # not None: a line may well hold the JSON value `null`


def _parse_line(raw: bytes, lineno: int, problems: _Problems) -> Any:
    """Decode and parse one line; report it and return _UNREADABLE when it cannot be read."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.add(lineno, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
        return _UNREADABLE
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        problems.add(lineno, f"invalid JSON: {exc.msg} (column {exc.colno})")
    except (ValueError, RecursionError) as exc:
        problems.add(lineno, f"invalid JSON: {exc or 'nested too deeply'}")
    return _UNREADABLE


def count_tokens(tokenizer: Any, messages: Messages) -> int:
    """Tokens the model sees for a record: the chat template applied, as in training."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    # Some tokenizer versions return an encoding object even when asked for plain ids.
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return len(ids)


def _check_length(tokenizer: Any, max_length: int | None, fmt: str, messages: Messages,
                  too_long_hint: str) -> str | None:
    field = LENGTH_FIELDS[fmt]
    try:
        n = count_tokens(tokenizer, messages)
    except AirlockError:
        raise  # a limit of the renderer (time, size): the template's, not this record's
    except Exception as exc:  # a template may raise for role orders it does not support
        return f"{field}: the model's chat template rejected this record: {exc}"
    if max_length is not None and n > max_length:
        return f"{field}: {n} tokens, longer than the model's context of {max_length} tokens{too_long_hint}"
    return None


def validate_bytes(
    data: bytes,
    *,
    source: str,
    tokenizer: Any = None,
    max_length: int | None = None,
    max_problems: int = MAX_PROBLEMS,
    too_long_hint: str = "",
) -> ValidatedDataset:
    """Validate the bytes of a JSONL dataset; `source` names the file in every problem.

    `too_long_hint` ends the message of a record over `max_length`: what to change, in the
    caller's terms (a CLI option, a setting).
    """
    if max_length is not None and tokenizer is None:
        raise InvalidInput("a maximum length needs the model's tokenizer to count tokens")
    if max_length is not None and max_length < 1:
        raise InvalidInput(f"maximum length must be positive, got {max_length}")

    problems = _Problems(source, max_problems)
    records: list[Messages] = []
    file_format: str | None = None
    format_line = 0

    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line does not start another one
    for lineno, raw in enumerate(lines, start=1):
        if lineno == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM):]
        if not raw.strip():
            continue
        record = _parse_line(raw.rstrip(b"\r"), lineno, problems)
        if record is _UNREADABLE:
            continue
        if not isinstance(record, dict):
            problems.add(lineno, f"expected a JSON object, got {json_type(record)}")
            continue

        fmt = detect_format(record)
        if fmt is None and file_format is None:
            problems.add(lineno, "no 'messages' (chat), 'conversations' (ShareGPT), 'instruction'/'output' "
                                 "(Alpaca) or 'prompt'/'completion' field: not a record of a known format")
            continue
        if file_format is None:
            file_format, format_line = fmt, lineno
        elif fmt is not None and fmt != file_format:
            problems.add(lineno, f"a {describe(fmt)} record in a file that is {describe(file_format)} "
                                 f"(set by line {format_line}); one file holds one format")
            continue

        messages, found = CHECKS[file_format](record)
        for message in found:
            problems.add(lineno, message)
        if messages is None:
            continue
        if tokenizer is not None:
            length_problem = _check_length(tokenizer, max_length, file_format, messages, too_long_hint)
            if length_problem:
                problems.add(lineno, length_problem)
                continue
        records.append(messages)

    if not records and not problems.count:
        problems.add(None, "empty file (no records; blank lines are skipped)")
    problems.raise_if_any()
    assert file_format is not None
    return ValidatedDataset(
        source=source, format=file_format, records=records, lines=len(lines),
        digest=sha256_bytes(data), size=len(data),
    )


def read_dataset_file(path: Path | str) -> bytes:
    path = Path(path)
    if not path.exists():
        raise NotFound(f"dataset file not found: {path}")
    if not path.is_file():
        raise InvalidInput(f"not a file: {path}")
    return path.read_bytes()


def validate_dataset(
    path: Path | str, *, tokenizer: Any = None, max_length: int | None = None
) -> ValidatedDataset:
    """Validate a JSONL dataset file; raise one InvalidInput listing every problem found.

    With a tokenizer, every record is rendered through its chat template (a record the template
    refuses is a problem); with `max_length` too, records with more tokens than that are refused.
    """
    path = Path(path)
    return validate_bytes(read_dataset_file(path), source=path.name, tokenizer=tokenizer,
                          max_length=max_length)
