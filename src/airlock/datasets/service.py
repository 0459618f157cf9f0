"""Dataset service: add (validate, store the raw file, record it), list, look up, load records.

Every dataset has an owner, a holder (the person behind API keys, see access/holders.py), and its
name lives in that owner's namespace. A caller reads through a `Reader`: its own datasets, those
shared with it, or all of them for approvers, admins and the operator. A plain name resolves in
the caller's own namespace only; another owner's dataset is named `@OWNER/NAME` or by digest, and
one the caller may not read answers exactly as one that does not exist.

The CLI and the HTTP API both call these functions; neither holds dataset logic of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airlock.access.holders import OPERATOR, check_holder
from airlock.context import Airlock
from airlock.datasets.names import refused_characters
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

COLUMNS = ("digest", "name", "owner", "format", "records", "source", "created_at")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM datasets"
_MAX_NAME = 200
QUALIFIED = "@"  # '@OWNER/NAME' names another owner's dataset; a plain name may not start with it
ALL_TRAINERS = "*"  # the share grantee that stands for every key allowed to read datasets


@dataclass(frozen=True)
class Reader:
    """Who is asking: the holder whose namespace plain names resolve in, and whether it may read
    every owner's datasets (approvers and admins over HTTP, the operator on the host)."""

    holder: str
    reads_all: bool = False


OPERATOR_READER = Reader(OPERATOR, reads_all=True)


def _check_name(name: str) -> str:
    """A name for people: printable, 1 to 200 characters, never read as a digest or an owner's
    qualified name, so `get_dataset` can tell the three apart without guessing."""
    # Checked before stripping: str.strip() would silently drop a trailing U+0085 or U+2028.
    if found := refused_characters(name or ""):
        raise InvalidInput(f"dataset name {name!r}: control and format (bidi, zero-width) characters are "
                           f"not allowed: {', '.join(found)}")
    name = (name or "").strip()
    if not name or len(name) > _MAX_NAME:
        raise InvalidInput(f"dataset name {name!r}: 1 to {_MAX_NAME} characters")
    if name.startswith("sha256:"):
        raise InvalidInput(f"a dataset name may not start with 'sha256:': {name!r}")
    if name.startswith(QUALIFIED):
        raise InvalidInput(f"a dataset name may not start with {QUALIFIED!r} (that names another owner's "
                           f"dataset, as @OWNER/NAME): {name!r}")
    return name


def add_dataset(
    airlock: Airlock,
    path: Path | str,
    *,
    name: str | None = None,
    owner: str = OPERATOR,
    tokenizer: Any = None,
    max_length: int | None = None,
    actor: str = "local",
) -> dict[str, Any]:
    """Validate a JSONL file and add it to `owner`'s namespace (the operator's by default: the
    CLI runs on the host); the same bytes added again by the same owner return the existing row.

    An invalid file raises InvalidInput before anything is written: no blob, no row, no audit.
    """
    path = Path(path)
    name = _check_name(name if name is not None else path.stem)
    owner = check_holder(owner, "--owner", reserved_ok=True)
    check_dataset_file(path)
    with path.open("rb") as stream:
        validated = validate_stream(stream, source=path.name, tokenizer=tokenizer, max_length=max_length,
                                    keep_records=False)
    return _store(airlock, lambda: airlock.store.put_file(path), validated, name=name, owner=owner,
                  source=path.name, actor=actor)


def add_dataset_upload(airlock: Airlock, upload: Path | bytes, *, name: str, owner: str, actor: str,
                       max_record_bytes: int = MAX_RECORD_BYTES) -> dict[str, Any]:
    """Add a dataset received over HTTP to `owner`'s namespace: the temporary file it was
    streamed into (or its bytes).

    A file is validated line by line and stored from the file, so the memory it takes stays
    within a fixed bound whatever its size. Problems and the row name the dataset by `name` only:
    where the bytes lay on the way in is the receiver's business, never part of an answer.
    """
    name = _check_name(name)
    if isinstance(upload, bytes):
        validated = validate_bytes(upload, source=name, keep_records=False, max_record_bytes=max_record_bytes)
        return _store(airlock, lambda: airlock.store.put_bytes(upload), validated, name=name, owner=owner,
                      source="upload", actor=actor)
    validated = validate_upload(upload, source=name, max_record_bytes=max_record_bytes)
    return _store(airlock, lambda: airlock.store.put_file(upload), validated, name=name, owner=owner,
                  source="upload", actor=actor)


def _store(airlock: Airlock, put: Callable[[], str], validated: ValidatedDataset, *, name: str, owner: str,
           source: str, actor: str) -> dict[str, Any]:
    existing = _owned_row(airlock, owner, validated.digest)
    if existing is not None:
        return existing

    # The store hashes what it copies: a file that changed after it was validated has another
    # digest, and is refused rather than recorded under the validated one. Another owner's copy
    # of the same bytes is the same blob, stored once.
    digest = put()
    if digest != validated.digest:
        raise IntegrityFailure(f"{name}: the file changed while it was added (validated {validated.digest}, "
                               f"stored {digest}); nothing was recorded")

    row = {
        "digest": digest, "name": name, "owner": owner, "format": validated.format,
        "records": validated.count, "source": source, "created_at": now(),
    }
    with airlock.meta.write() as db:
        # Checked again under the write lock: another process may have added it meanwhile.
        query = "SELECT 1 FROM datasets WHERE owner = ? AND digest = ?"
        added = db.execute(query, [owner, digest]).fetchone() is None
        if added:
            db["datasets"].insert(row)
    if not added:
        return _owned_row(airlock, owner, digest) or row
    airlock.meta.audit(actor, "dataset.add", digest, name=name, owner=owner, format=validated.format,
                       records=row["records"], source=row["source"])
    return row


def _owned_row(airlock: Airlock, owner: str, digest: str) -> dict[str, Any] | None:
    return airlock.meta.one(f"{_SELECT} WHERE owner = ? AND digest = ?", (owner, digest))


def _readable(reader: Reader) -> tuple[str, dict[str, Any]]:
    """The SQL condition (and its parameters) for the datasets `reader` may read."""
    if reader.reads_all:
        return "1", {}
    return ("(owner = :holder OR id IN (SELECT dataset_id FROM dataset_shares "
            "WHERE grantee IN (:holder, :everyone)))"), {"holder": reader.holder, "everyone": ALL_TRAINERS}


def list_datasets(airlock: Airlock, *, reader: Reader, owner: str | None = None) -> list[dict[str, Any]]:
    """The datasets `reader` may read (of `owner` only, if given), newest first; each with `ref`,
    how this reader names it (its name in its own namespace, @OWNER/NAME, or the digest of a
    dataset whose name a newer one has taken over)."""
    where, params = _readable(reader)
    if owner is not None:
        where, params = f"{where} AND owner = :owner", {**params, "owner": check_holder(owner, "--owner",
                                                                                         reserved_ok=True)}
    # Whether the name means this row is asked of all the owner's rows, readable or not: a shared
    # older dataset under a name that a newer, unshared one took over is named by its digest.
    newest = ("NOT EXISTS (SELECT 1 FROM datasets AS n WHERE n.owner = datasets.owner AND n.name = datasets.name "
              "AND (n.created_at, n.id) > (datasets.created_at, datasets.id)) AS newest")
    rows = airlock.meta.query(f"SELECT {', '.join(COLUMNS)}, {newest} FROM datasets WHERE {where} "
                              "ORDER BY created_at DESC, id DESC", params)
    for row in rows:
        fresh = row.pop("newest")
        row["ref"] = (row["digest"] if not fresh else row["name"] if row["owner"] == reader.holder
                      else f"{QUALIFIED}{row['owner']}/{row['name']}")
    return rows


def get_dataset(airlock: Airlock, ref: str, *, reader: Reader) -> dict[str, Any]:
    """A dataset `reader` may read, by digest (`sha256:...`), `@OWNER/NAME`, or a name in the
    reader's own namespace; a reused name means the newest dataset under it. Anything the reader
    may not read is NotFound with the very message of one that does not exist."""
    key = (ref or "").strip()
    where, params = _readable(reader)
    if key.startswith("sha256:"):
        if not DIGEST_RE.match(key):
            raise InvalidInput(f"not a digest: {key!r} (expected 'sha256:' and 64 hex digits)")
        # The reader's own copy first: several owners may hold the same bytes, one row each.
        row = airlock.meta.one(f"{_SELECT} WHERE digest = :digest AND {where} "
                               "ORDER BY owner = :me DESC, created_at DESC LIMIT 1",
                               {**params, "digest": key, "me": reader.holder})
        if row is None:
            raise NotFound(f"no dataset with digest {key}")
        return row
    owner, name = _split_ref(key, reader)
    row = airlock.meta.one(f"{_SELECT} WHERE owner = :owner AND name = :name "
                           "ORDER BY created_at DESC, id DESC LIMIT 1", {"owner": owner, "name": name})
    # The newest under the name or nothing: an older, shared copy is never silently substituted.
    if row is None or not _may_read(airlock, row, reader):
        raise NotFound(f"no dataset named {key!r}")
    return row


def _split_ref(key: str, reader: Reader) -> tuple[str, str]:
    """(owner, name) of a plain name (the reader's own namespace) or of '@OWNER/NAME'."""
    if not key.startswith(QUALIFIED):
        return reader.holder, key
    owner, slash, name = key[1:].partition("/")
    if not slash or not name:
        raise InvalidInput(f"{key!r}: another owner's dataset is named @OWNER/NAME")
    return check_holder(owner, f"{key!r}: owner", reserved_ok=True), name


def _may_read(airlock: Airlock, row: dict[str, Any], reader: Reader) -> bool:
    where, params = _readable(reader)
    found = airlock.meta.one(f"SELECT 1 AS yes FROM datasets WHERE owner = :o AND digest = :d AND {where}",
                             {**params, "o": row["owner"], "d": row["digest"]})
    return found is not None


def _stored_row(airlock: Airlock, digest: str) -> dict[str, Any]:
    """A dataset's row by digest, whoever owns it: for work already resolved at submission (a
    queued run recorded the digest its submitter could read), never for a caller's lookup."""
    if not DIGEST_RE.match(digest or ""):
        raise InvalidInput(f"not a digest: {digest!r} (expected 'sha256:' and 64 hex digits)")
    row = airlock.meta.one(f"{_SELECT} WHERE digest = ? ORDER BY created_at LIMIT 1", (digest,))
    if row is None:
        raise NotFound(f"no dataset with digest {digest}")
    return row


def length_problems(airlock: Airlock, digest: str, *, tokenizer: Any, max_length: int,
                    too_long_hint: str = "", label: str | None = None) -> list[str]:
    """Every record of a stored dataset that the model's template refuses or that is longer than
    `max_length` tokens, by line (prefixed with `label`, by default the dataset's name); empty
    when all fit. Length belongs to a dataset and a model together, so it is checked when a
    workflow pairs them, not when the dataset is added; the digest was resolved with the caller."""
    row = _stored_row(airlock, digest)
    try:
        validate_bytes(airlock.store.get_bytes(row["digest"]), source=label or row["name"], tokenizer=tokenizer,
                       max_length=max_length, too_long_hint=too_long_hint)
    except InvalidInput as exc:
        return exc.problems or [exc.message]
    return []


def load_records(airlock: Airlock, digest: str) -> list[Messages]:
    """A stored dataset's records as message lists, read back through the verifying store. By
    digest only: the stages read what their run recorded at submission."""
    row = _stored_row(airlock, digest)
    data = airlock.store.get_bytes(row["digest"])
    try:
        validated = validate_bytes(data, source=row["source"] or row["name"])
    except InvalidInput as exc:
        # It was valid when added and the store checked its hash: the rules changed, not the file.
        raise IntegrityFailure(f"stored dataset {row['digest']} no longer validates: {exc}") from exc
    if validated.format != row["format"] or validated.count != row["records"]:
        raise IntegrityFailure(f"stored dataset {row['digest']} does not match its metadata row")
    return validated.records
