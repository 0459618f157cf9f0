"""Dataset service: add (validate, store the raw file, record it), list, look up, load records.

The CLI and the HTTP API both call these functions; neither holds dataset logic of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airlock.context import Airlock
from airlock.datasets.records import Messages
from airlock.datasets.validate import (
    MAX_RECORD_BYTES,
    ValidatedDataset,
    check_dataset_file,
    validate_bytes,
    validate_stream,
    validate_upload,
)
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
    check_dataset_file(path)
    with path.open("rb") as stream:
        validated = validate_stream(stream, source=path.name, tokenizer=tokenizer, max_length=max_length,
                                    keep_records=False)
    return _store(airlock, lambda: airlock.store.put_file(path), validated, name=name, source=path.name,
                  actor=actor)


def add_dataset_upload(airlock: Airlock, upload: Path | bytes, *, name: str, actor: str,
                       max_record_bytes: int = MAX_RECORD_BYTES) -> dict[str, Any]:
    """Add a dataset received over HTTP: the temporary file it was streamed into (or its bytes).

    A file is validated line by line and stored from the file, so the memory it takes stays
    within a fixed bound whatever its size. Problems and the row name the dataset by `name` only:
    where the bytes lay on the way in is the receiver's business, never part of an answer.
    """
    name = _check_name(name)
    if isinstance(upload, bytes):
        validated = validate_bytes(upload, source=name, keep_records=False, max_record_bytes=max_record_bytes)
        return _store(airlock, lambda: airlock.store.put_bytes(upload), validated, name=name, source="upload",
                      actor=actor)
    validated = validate_upload(upload, source=name, max_record_bytes=max_record_bytes)
    return _store(airlock, lambda: airlock.store.put_file(upload), validated, name=name, source="upload",
                  actor=actor)


def _store(airlock: Airlock, put: Callable[[], str], validated: ValidatedDataset, *, name: str, source: str,
           actor: str) -> dict[str, Any]:
    existing = _row_by_digest(airlock, validated.digest)
    if existing is not None:
        return existing

    # The store hashes what it copies: a file that changed after it was validated has another
    # digest, and is refused rather than recorded under the validated one.
    digest = put()
    if digest != validated.digest:
        raise IntegrityFailure(f"{name}: the file changed while it was added (validated {validated.digest}, "
                               f"stored {digest}); nothing was recorded")

    row = {
        "digest": digest, "name": name, "format": validated.format,
        "records": validated.count, "source": source, "created_at": now(),
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
    if validated.format != row["format"] or validated.count != row["records"]:
        raise IntegrityFailure(f"stored dataset {row['digest']} does not match its metadata row")
    return validated.records
