"""Fine-tuned adapters as models: registered by training, signed after evaluation, verified on use."""

from __future__ import annotations

import json

from airlock.context import Airlock
from airlock.errors import IntegrityFailure, NotFound
from airlock.meta.db import now


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


def get_model(airlock: Airlock, model_id: str) -> dict:
    row = airlock.meta.one("SELECT * FROM models WHERE id = ?", (model_id,))
    if row is None:
        known = [r["id"] for r in airlock.meta.query("SELECT id FROM models ORDER BY created_at DESC LIMIT 10")]
        raise NotFound(f"no model {model_id!r}" + (f"; known: {', '.join(known)}" if known else "; none yet"))
    return row


def list_models(airlock: Airlock) -> list[dict]:
    rows = airlock.meta.query(
        """SELECT m.id, m.kind, m.base_model, m.tree_digest, m.manifest_digest, m.run_id, m.created_at,
                  m.checked_at, m.check_error,
                  (SELECT COUNT(*) FROM promotions p WHERE p.model_id = m.id) AS promotions,
                  (SELECT group_concat(a.name) FROM aliases a WHERE a.model_id = m.id) AS aliases
           FROM models m ORDER BY m.created_at"""
    )
    return rows


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
