"""Fine-tuned adapters as models: registered by training, signed after evaluation, verified on use."""

from __future__ import annotations

import json
from typing import TypedDict

from airlock.context import Airlock
from airlock.errors import IntegrityFailure, NotFound
from airlock.meta.db import now


class ModelRow(TypedDict):
    """A fine-tuned model's row (`get_model`): what it adapts, what trained it, and whether its
    signed manifest was last checked good. `get_model` reads exactly these columns."""

    id: str  # `adp-` and the start of its tree digest
    kind: str  # lora-adapter
    base_model: str  # the base model's folder name
    base_digest: str
    dataset_digest: str | None
    tree_digest: str  # of the adapter's files
    config_json: str | None  # the training configuration, as JSON
    eval_json: str | None
    manifest_digest: str | None  # its signed manifest; None while unsigned
    run_id: str | None
    created_at: str
    checked_at: str | None  # when its files were last checked against the manifest
    check_error: str | None  # what that check found wrong; None when it passed
    revoked_at: str | None  # revoked for good (never staged, promoted or served again)
    revoked_by: str | None
    revoked_reason: str | None


class ModelListing(TypedDict):
    """A model in `list_models`: the row's summary with its promotions and the aliases serving it."""

    id: str
    kind: str
    base_model: str
    tree_digest: str
    manifest_digest: str | None
    run_id: str | None
    created_at: str
    checked_at: str | None
    check_error: str | None
    revoked_at: str | None
    promotions: int  # approved promotions (signed records)
    aliases: str | None  # the production aliases serving it, comma-separated; None when none does


_MODEL_COLUMNS = ", ".join(ModelRow.__annotations__)


def adapter_id(tree_digest: str) -> str:
    """Ids are derived from content, so the same adapter bytes always have the same id."""
    return "adp-" + tree_digest.removeprefix("sha256:")[:12]


def register_adapter(airlock: Airlock, *, tree_digest: str, base_model: dict, dataset_digest: str,
                     config: dict, run_id: str) -> str:
    model_id = adapter_id(tree_digest)
    with airlock.meta.write() as db:
        if not db["models"].count_where("id = ?", [model_id]):
            db["models"].insert({
                "id": model_id, "kind": "lora-adapter", "base_model": base_model["name"],
                "base_digest": base_model["digest"], "dataset_digest": dataset_digest,
                "tree_digest": tree_digest, "config_json": json.dumps(config, sort_keys=True),
                "eval_json": None, "manifest_digest": None, "run_id": run_id, "created_at": now(),
            })
    airlock.meta.audit("worker", "model.registered", model_id, run_id=run_id, tree=tree_digest)
    return model_id


def get_model(airlock: Airlock, model_id: str) -> ModelRow:
    row = airlock.meta.one(f"SELECT {_MODEL_COLUMNS} FROM models WHERE id = ?", (model_id,))
    if row is None:
        known = [r["id"] for r in airlock.meta.query("SELECT id FROM models ORDER BY created_at DESC LIMIT 10")]
        raise NotFound(f"no model {model_id!r}" + (f"; known: {', '.join(known)}" if known else "; none yet"))
    return ModelRow(**row)


def list_models(airlock: Airlock) -> list[ModelListing]:
    rows = airlock.meta.query(
        """SELECT m.id, m.kind, m.base_model, m.tree_digest, m.manifest_digest, m.run_id, m.created_at,
                  m.checked_at, m.check_error, m.revoked_at,
                  (SELECT COUNT(*) FROM promotions p WHERE p.model_id = m.id AND p.record_digest IS NOT NULL)
                      AS promotions,
                  (SELECT group_concat(a.name) FROM aliases a WHERE a.model_id = m.id AND a.staged_for IS NULL
                      AND a.revoked_note IS NULL) AS aliases
           FROM models m ORDER BY m.created_at"""
    )
    return [ModelListing(**r) for r in rows]


def check_tree(airlock: Airlock, files: dict[str, dict]) -> None:
    """Re-read every file of a signed manifest from the store; report every mismatch at once."""
    problems = []
    for rel, entry in sorted(files.items()):
        try:
            data = airlock.store.get_bytes(entry["sha256"])
        except (IntegrityFailure, NotFound) as exc:
            problems.append(f"{rel}: {exc.message}")
            continue
        if len(data) != entry["size"]:
            problems.append(f"{rel}: size {len(data)} differs from the signed size {entry['size']}")
    if problems:
        raise IntegrityFailure("stored files do not match the signed manifest", problems=problems)
