"""Where a base model came from: `airlock-provenance.json` in its folder.

Written once when a model is admitted (`airlock models import`, or a converted GGUF file) with the
sha256 of every file as admitted. It is a record for people, not a seal: the catalog's model
digest (what runs record and the gate checks) leaves it out, so writing it changes no digest, and
whoever could edit it could edit the weights too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

PROVENANCE_FILE = "airlock-provenance.json"
MAX_BYTES = 4 * 1024 * 1024  # a record of a few thousand files; anything larger is not ours


class Provenance(TypedDict, total=False):
    source: str  # "folder" (imported as is) or "gguf" (converted)
    imported_from: str  # the path the operator gave
    imported_at: str  # ISO 8601, UTC
    imported_by: str  # the audit log's actor
    chat_template_from: str  # the --chat-template file, when one was given
    files: dict[str, str]  # relative path -> sha256 hex, as admitted
    # A converted GGUF file (models/gguf.py): the file, what it was dequantized from, into what.
    gguf: dict[str, str]  # {"file": name, "sha256": hex}
    dequantized_from: str  # the quantization holding most parameters, e.g. "Q4_1"
    architecture: str
    dtype: str
    wheel: dict[str, str]  # the shipped model's: the locked wheel the GGUF file came out of


def read_provenance(folder: Path) -> Provenance | None:
    """The folder's record, or None when it has none or an unreadable one (a listing never fails
    for it)."""
    path = Path(folder) / PROVENANCE_FILE
    try:
        if path.is_symlink() or path.stat().st_size > MAX_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("source"), str):
        return None
    return Provenance(**data)


def provenance_bytes(record: Provenance) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")
