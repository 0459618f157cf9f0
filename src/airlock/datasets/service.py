"""Dataset service: add (validate, store the raw file, record it), list, look up, load records.

The CLI and the HTTP API both call these functions; neither holds dataset logic of its own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, BinaryIO

from airlock.context import Airlock
from airlock.datasets.records import Messages
from airlock.datasets.validate import read_dataset_file, validate_bytes
from airlock.errors import IntegrityFailure, InvalidInput, NotFound
from airlock.meta.db import now
from airlock.store.base import DIGEST_RE

COLUMNS = ("digest", "name", "format", "records", "source", "created_at")

# Names are for people; anything printable goes, but a name must never read as a digest, so that
# `get_dataset` can tell the two apart without guessing.
_NAME_RE = re.compile(r"[^\x00-\x1f\x7f]{1,200}")


def _check_name(name: str) -> str:
    name = name.strip()
    if not _NAME_RE.fullmatch(name):
        raise InvalidInput(f"not a valid dataset name: {name!r} (1 to 200 printable characters)")
    if name.startswith("sha256:"):
        raise InvalidInput(f"a dataset name may not start with 'sha256:': {name!r}")
    return name


def add_dataset(
    airlock: Airlock,
    path: Path | str,
    *,
    name: str | None = None,
    tokenizer: Any = None,
    max_length: int | None = None,
    actor: str = "local",
) -> dict[str, Any]:
    """Validate a JSONL file and add it; adding the same bytes again returns the existing row.

    An invalid file raises InvalidInput before anything is written: no blob, no row, no audit.
    """
    path = Path(path)
    name = _check_name(name if name is not None else path.stem)
    return _add_bytes(airlock, read_dataset_file(path), name=name, label=path.name, source=path.name,
                      tokenizer=tokenizer, max_length=max_length, actor=actor)


def add_dataset_upload(airlock: Airlock, upload: bytes | Path | BinaryIO, *, name: str,
                       actor: str) -> dict[str, Any]:
    """Add a dataset received over HTTP: its bytes, or the temporary file they were received into.

    Problems and the row name the dataset by `name` only: where the bytes lay on the way in is
    the receiver's business, never part of an answer.
    """
    name = _check_name(name)
    if isinstance(upload, Path):
        data = upload.read_bytes()
    elif isinstance(upload, bytes):
        data = upload
    else:
        data = upload.read()
    return _add_bytes(airlock, data, name=name, label=name, source="upload", actor=actor)


def _add_bytes(airlock: Airlock, data: bytes, *, name: str, label: str, source: str,
               tokenizer: Any = None, max_length: int | None = None, actor: str) -> dict[str, Any]:
    validated = validate_bytes(data, source=label, tokenizer=tokenizer, max_length=max_length)

    existing = _row_by_digest(airlock, validated.digest)
    if existing is not None:
        return existing

    # The bytes that were validated are the bytes stored: no second read of the file.
    digest = airlock.store.put_bytes(data)
    if digest != validated.digest:
        raise IntegrityFailure(f"store returned {digest} for bytes that hash to {validated.digest}")

    row = {
        "digest": digest, "name": name, "format": validated.format,
        "records": len(validated.records), "source": source, "created_at": now(),
    }
    with airlock.meta.write() as db:
        # Checked again under the write lock: another process may have added it meanwhile.
        if db.execute("SELECT 1 FROM datasets WHERE digest = ?", [digest]).fetchone() is None:
            db["datasets"].insert(row)
            added = True
        else:
            added = False
    if not added:
        return _row_by_digest(airlock, digest) or row
    airlock.meta.audit(actor, "dataset.add", digest, name=name, format=validated.format,
                       records=row["records"], source=row["source"])
    return row


def _row_by_digest(airlock: Airlock, digest: str) -> dict[str, Any] | None:
    return airlock.meta.one(f"SELECT {', '.join(COLUMNS)} FROM datasets WHERE digest = ?", (digest,))


def list_datasets(airlock: Airlock) -> list[dict[str, Any]]:
    """Every dataset, newest first."""
    return airlock.meta.query(
        f"SELECT {', '.join(COLUMNS)} FROM datasets ORDER BY created_at DESC, name"
    )


def get_dataset(airlock: Airlock, digest_or_name: str) -> dict[str, Any]:
    """A dataset by digest (`sha256:...`) or by name; a reused name means its newest dataset."""
    key = (digest_or_name or "").strip()
    if key.startswith("sha256:"):
        if not DIGEST_RE.match(key):
            raise InvalidInput(f"not a digest: {key!r} (expected 'sha256:' and 64 hex digits)")
        row = _row_by_digest(airlock, key)
        if row is None:
            raise NotFound(f"no dataset with digest {key}")
        return row
    row = airlock.meta.one(
        f"SELECT {', '.join(COLUMNS)} FROM datasets WHERE name = ? ORDER BY created_at DESC LIMIT 1",
        (key,),
    )
    if row is None:
        raise NotFound(f"no dataset named {key!r}")
    return row


def length_problems(airlock: Airlock, digest_or_name: str, *, tokenizer: Any, max_length: int,
                    too_long_hint: str = "", label: str | None = None) -> list[str]:
    """Every record of a stored dataset that the model's template refuses or that is longer than
    `max_length` tokens, by line (prefixed with `label`, by default the dataset's name); empty
    when all fit. Length belongs to a dataset and a model together, so it is checked when a
    workflow pairs them, not when the dataset is added."""
    row = get_dataset(airlock, digest_or_name)
    try:
        validate_bytes(airlock.store.get_bytes(row["digest"]), source=label or row["name"], tokenizer=tokenizer,
                       max_length=max_length, too_long_hint=too_long_hint)
    except InvalidInput as exc:
        return exc.problems or [exc.message]
    return []


def load_records(airlock: Airlock, digest: str) -> list[Messages]:
    """A stored dataset's records as message lists, read back through the verifying store."""
    row = get_dataset(airlock, digest)
    data = airlock.store.get_bytes(row["digest"])
    try:
        validated = validate_bytes(data, source=row["source"] or row["name"])
    except InvalidInput as exc:
        # It was valid when added and the store checked its hash: the rules changed, not the file.
        raise IntegrityFailure(f"stored dataset {row['digest']} no longer validates: {exc}") from exc
    if validated.format != row["format"] or len(validated.records) != row["records"]:
        raise IntegrityFailure(f"stored dataset {row['digest']} does not match its metadata row")
    return validated.records
