"""Sharing a dataset: an admin (over /api) or the operator (the CLI) lets named holders, or every
trainer, read one owner's dataset, and takes it back. Each change is an audit row.

A share belongs to one dataset (those bytes of that owner), not to its name: a later upload under
the same name is a new dataset that nobody else reads until it is shared too.
"""

from __future__ import annotations

from typing import Any

from airlock.access.holders import check_holder
from airlock.context import Airlock
from airlock.datasets.service import ALL_TRAINERS, QUALIFIED, Reader, get_dataset
from airlock.errors import InvalidInput, NotFound
from airlock.meta.db import now


def grantees(airlock: Airlock, holders: list[str], keys: list[str], all_trainers: bool) -> list[str]:
    """The holders named, the holders of the keys named (two keys of one person are one person),
    and ALL_TRAINERS; InvalidInput or NotFound for a name no key holds, so a typo shares nothing."""
    found = [ALL_TRAINERS] if all_trainers else []
    for holder in holders:
        holder = check_holder(holder, "--with", reserved_ok=True)
        if airlock.meta.one("SELECT 1 AS yes FROM api_keys WHERE holder = ?", (holder,)) is None:
            raise NotFound(f"--with {holder!r}: no API key has this holder (see `airlock apikey list`)")
        found.append(holder)
    for key_id in keys:
        row = airlock.meta.one("SELECT holder FROM api_keys WHERE id = ?", (key_id.strip(),))
        if row is None:
            raise NotFound(f"--key {key_id!r}: no API key with this id (see `airlock apikey list`)")
        found.append(row["holder"])
    if not found:
        raise InvalidInput("name whom to share with: --with HOLDER, --key KEY_ID or --all-trainers")
    return sorted(set(found))


def _dataset(airlock: Airlock, ref: str, reader: Reader) -> tuple[int, dict[str, Any]]:
    """(id, row) of the one dataset `ref` names; a digest that several owners hold is ambiguous."""
    row = get_dataset(airlock, ref, reader=reader)
    if ref.strip().startswith("sha256:"):
        owners = [r["owner"] for r in airlock.meta.query("SELECT owner FROM datasets WHERE digest = ?", (row["digest"],))]
        if len(owners) > 1:
            raise InvalidInput(f"{ref}: several owners hold these bytes; name one: "
                               + ", ".join(f"{QUALIFIED}{o}/..." for o in sorted(owners)))
    found = airlock.meta.one("SELECT id FROM datasets WHERE owner = ? AND digest = ?", (row["owner"], row["digest"]))
    return found["id"], row


def shared_with(airlock: Airlock, dataset_id: int) -> list[str]:
    return [r["grantee"] for r in airlock.meta.query(
        "SELECT grantee FROM dataset_shares WHERE dataset_id = ? ORDER BY grantee", (dataset_id,))]


def share_dataset(airlock: Airlock, ref: str, with_: list[str], *, reader: Reader, actor: str) -> dict[str, Any]:
    """Let the grantees (from `grantees`) read the dataset `ref`; sharing twice changes nothing."""
    dataset_id, row = _dataset(airlock, ref, reader)
    with airlock.meta.write() as db:
        before = {r[0] for r in db.execute("SELECT grantee FROM dataset_shares WHERE dataset_id = ?", [dataset_id])}
        added = [g for g in with_ if g not in before]
        for grantee in added:
            db["dataset_shares"].insert({"dataset_id": dataset_id, "grantee": grantee, "shared_by": actor,
                                         "shared_at": now()})
    if added:
        airlock.meta.audit(actor, "dataset.share", row["digest"], owner=row["owner"], name=row["name"], added=added)
    return {**row, "shared_with": shared_with(airlock, dataset_id)}


def unshare_dataset(airlock: Airlock, ref: str, with_: list[str], *, reader: Reader,
                    actor: str) -> dict[str, Any]:
    """Take back what `share_dataset` gave; runs already queued keep the digest they recorded."""
    dataset_id, row = _dataset(airlock, ref, reader)
    with airlock.meta.write() as db:
        removed = [g for g in with_ if db.execute("DELETE FROM dataset_shares WHERE dataset_id = ? AND grantee = ?",
                                                   [dataset_id, g]).rowcount]
    if removed:
        airlock.meta.audit(actor, "dataset.unshare", row["digest"], owner=row["owner"], name=row["name"],
                           removed=removed)
    return {**row, "shared_with": shared_with(airlock, dataset_id)}
