"""The trust root an installed appliance pins: set once out of band, replaced only through rotation.

    TRUST_DIR/root.json        the pinned root (0644): what every bundle and promotion is checked against
    TRUST_DIR/N.root.json      each root it replaced, so the chain it walked can be read back

The first root is taken only when a root key fingerprint the operator received out of band (read
aloud, on paper) matches, and the root carries its own root role's threshold of signatures. Every
later root must be a rotation of the pinned one (version N+1, signed by the threshold of N and of
N+1), so a bundle cannot swap the root it is checked against.

Standard library only (like root.py), so the stand-alone installer can pin with these functions.
"""

from __future__ import annotations

import fcntl
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from airlock.errors import IntegrityFailure, InvalidInput, NotFound
from airlock.trust.atomic import write_atomic
from airlock.trust.root import Root, canonical_json, parse_root, update_chain, verify_root_self

ROOT_FILE = "root.json"
PINNED_MODE = 0o644  # public data: every local service reads it; only its owner may change it
FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def trust_dir(settings) -> Path:
    """Where an appliance keeps its pinned root: AIRLOCK_HOME/trust."""
    return Path(settings.home) / "trust"


def normalize_fingerprint(text: str) -> str:
    """A fingerprint as `trust show` prints it (groups of four) or as one string, in lowercase hex."""
    cleaned = re.sub(r"[\s:]", "", str(text)).lower()
    if not FINGERPRINT.match(cleaned):
        raise InvalidInput(f"fingerprint {text!r}: expected the 64 hex digits of a root key's fingerprint "
                           "(spaces and colons allowed)")
    return cleaned


def check_fingerprints(root: Root, expected: str | Iterable[str], *, source: str) -> None:
    """Every fingerprint the operator was given must be one of this root's root-role keys."""
    wanted = [normalize_fingerprint(f) for f in ([expected] if isinstance(expected, str) else expected)]
    if not wanted:
        raise InvalidInput("no root key fingerprint given: a first root is pinned only against one "
                           "received out of band")
    strangers = [f for f in wanted if f not in root.roles["root"].keyids]
    if strangers:
        raise IntegrityFailure(f"{source}: no root key of this root has the fingerprint(s) {', '.join(strangers)}; "
                               f"its root keys are {', '.join(root.roles['root'].keyids)}. Do not pin it: "
                               "the root is not the one your fingerprint came from")


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One pin or rotation at a time per trust directory (a second one waits)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise NotFound(f"{path}: no trust root is pinned here; pin the first one with "
                       "`airlock trust pin ROOT --fingerprint FP`") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityFailure(f"{path}: the pinned trust root is not JSON: {exc}") from None


def load_pinned(directory: Path) -> Root:
    """The pinned root, as it was verified when it was written (an expired one loads, to be rotated)."""
    path = Path(directory) / ROOT_FILE
    return parse_root(_read(path), source=str(path))


def pin_first(directory: Path, root_doc: Any, expected_fingerprint: str | Iterable[str], *, now: datetime) -> Root:
    """Pin a first root: nothing pinned yet, the fingerprint(s) match, its own root threshold signed it."""
    directory = Path(directory)
    path = directory / ROOT_FILE
    root = verify_root_self(root_doc, now=now, source="the root to pin")
    check_fingerprints(root, expected_fingerprint, source="the root to pin")
    with _locked(directory):
        if path.exists() or not write_atomic(path, canonical_json(root_doc), PINNED_MODE, exclusive=True):
            raise InvalidInput(f"{path}: a trust root is pinned already; a pinned root is replaced only by its "
                               "rotation (`airlock trust accept`)")
    return root


def accept_new_roots(directory: Path, docs: list, *, now: datetime) -> Root:
    """Move the pinned root N to the last of `docs`, each a rotation of the one before; keep the old ones."""
    directory = Path(directory)
    if not docs:
        raise InvalidInput("no new root given")
    with _locked(directory):
        pinned = load_pinned(directory)
        newest = update_chain(pinned, docs, now=now, source=f"{directory / ROOT_FILE}: new root")
        for doc in [pinned.document, *docs[:-1]]:
            version = doc["signed"]["version"]
            write_atomic(directory / f"{version}.root.json", canonical_json(doc), PINNED_MODE)
        write_atomic(directory / ROOT_FILE, canonical_json(docs[-1]), PINNED_MODE)
    return newest
