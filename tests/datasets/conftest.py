"""Dataset fixtures: a writer for JSONL files and a small real tokenizer with a chat template."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Write lines (dicts become JSON, str and bytes are written as they are) to a .jsonl file."""

    def write(*lines: dict | str | bytes, name: str = "data.jsonl") -> Path:
        out = b""
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            out += (line.encode() if isinstance(line, str) else line) + b"\n"
        path = tmp_path / name
        path.write_bytes(out)
        return path

    return write


@pytest.fixture(scope="session")
def tokenizer():
    """The reference model's tokenizer (byte-level BPE and chat template), trained in a second."""
    from airlock.models.reference import load_corpus, train_tokenizer

    return train_tokenizer(load_corpus(), vocab_size=512)
