"""Validate a JSONL dataset file: every problem, each with file:line and field, reported at once.

Validation works on the raw bytes that will be stored, so what was checked is exactly what the
store holds under the digest (there is no window in which the file could change in between).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from airlock.datasets.records import CHECKS, LENGTH_FIELDS, Messages, describe, detect_format, json_type
from airlock.errors import AirlockError, InvalidInput, NotFound

# Enough to show the pattern of what is wrong; a file with 40,000 bad lines needs one fix, not
# 40,000 lines of output.
MAX_PROBLEMS = 100

UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class ValidatedDataset:
    source: str
    format: str
    records: list[Messages]  # empty when validated without keeping them (`count` holds how many)
    count: int
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


# A record longer than this is refused by line without being read into memory whole: no model's
# context holds a megabyte of text, and a bound per line is what keeps validating an upload of any
# size within a fixed amount of memory (`max_record_bytes` raises it).
MAX_RECORD_BYTES = 1 << 20
_SKIP_CHUNK = 1 << 16


def _lines(stream: BinaryIO, digest: Any, max_record_bytes: int,
           problems: _Problems) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the newline) of each line of `stream`, every byte read into
    `digest`; a line over `max_record_bytes` is reported and skipped in chunks, never held."""
    lineno = 0
    while raw := stream.readline(max_record_bytes + 1):
        lineno += 1
        digest.update(raw)
        if len(raw) > max_record_bytes and not raw.endswith(b"\n"):
            while rest := stream.readline(_SKIP_CHUNK):
                digest.update(rest)
                if rest.endswith(b"\n"):
                    break
            problems.add(lineno, f"a record of more than {max_record_bytes} bytes, longer than any record "
                                 "a model's context holds; split the document")
            continue
        yield lineno, raw.removesuffix(b"\n")


def validate_stream(
    stream: BinaryIO,
    *,
    source: str,
    tokenizer: Any = None,
    max_length: int | None = None,
    max_problems: int = MAX_PROBLEMS,
    too_long_hint: str = "",
    keep_records: bool = True,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> ValidatedDataset:
    """Validate a JSONL dataset read from `stream`, line by line; `source` names the file in every
    problem. Without `keep_records` only the count is kept, so memory stays within a bound of a
    few records whatever the file's size (an upload is validated this way).

    `too_long_hint` ends the message of a record over `max_length`: what to change, in the
    caller's terms (a CLI option, a setting).
    """
    if max_length is not None and tokenizer is None:
        raise InvalidInput("a maximum length needs the model's tokenizer to count tokens")
    if max_length is not None and max_length < 1:
        raise InvalidInput(f"maximum length must be positive, got {max_length}")

    problems = _Problems(source, max_problems)
    records: list[Messages] = []
    count = 0
    file_format: str | None = None
    format_line = 0
    digest, lines = hashlib.sha256(), 0

    for lineno, raw in _lines(stream, digest, max_record_bytes, problems):
        lines = lineno
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
        count += 1
        if keep_records:
            records.append(messages)

    if not count and not problems.count:
        problems.add(None, "empty file (no records; blank lines are skipped)")
    problems.raise_if_any()
    assert file_format is not None
    return ValidatedDataset(
        source=source, format=file_format, records=records, count=count, lines=lines,
        digest="sha256:" + digest.hexdigest(), size=stream.tell(),
    )


def validate_bytes(data: bytes, *, source: str, **options: Any) -> ValidatedDataset:
    """Validate the bytes of a JSONL dataset (see `validate_stream` for the options)."""
    return validate_stream(io.BytesIO(data), source=source, **options)


def validate_upload(path: Path, *, source: str, max_record_bytes: int = MAX_RECORD_BYTES) -> ValidatedDataset:
    """Validate a received file without keeping its records: the digest is of the bytes read, so
    the caller stores the file only if the store's digest of it agrees."""
    with path.open("rb") as stream:
        return validate_stream(stream, source=source, keep_records=False, max_record_bytes=max_record_bytes)


def check_dataset_file(path: Path) -> None:
    if not path.exists():
        raise NotFound(f"dataset file not found: {path}")
    if not path.is_file():
        raise InvalidInput(f"not a file: {path}")


def read_dataset_file(path: Path | str) -> bytes:
    path = Path(path)
    check_dataset_file(path)
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
