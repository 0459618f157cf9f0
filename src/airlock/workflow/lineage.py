"""Where an adapter came from and where it went: dataset -> run -> adapter -> promotion -> alias ->
the keys that called it. Every link is a recorded digest or id, so lineage is a query over what
the stages wrote, never a reconstruction."""

from __future__ import annotations

import json
from typing import Any

from airlock.context import Airlock
from airlock.models.adapters import get_model


def lineage(airlock: Airlock, model_id: str) -> dict[str, Any]:
    """The adapter's chain, each link as recorded (None where a link does not exist yet)."""
    meta = airlock.meta
    model = get_model(airlock, model_id)
    dataset = _dataset(airlock, model["dataset_digest"], model["run_id"]) if model["dataset_digest"] else None
    run = meta.one("SELECT id, workflow, status, submitted_by AS owner, created_at, finished_at FROM runs WHERE id = ?",
                   (model["run_id"],)) if model["run_id"] else None
    promotions = [{**p, "decision": json.loads(p.pop("decision_json"))} for p in meta.query(
        "SELECT id, manifest_digest, decision_json, created_at FROM promotions WHERE model_id = ? ORDER BY id",
        (model_id,))]
    serving = [r["name"] for r in meta.query("SELECT name FROM aliases WHERE model_id = ? AND staged_for IS NULL "
                                              "AND revoked_note IS NULL ORDER BY name", (model_id,))]
    history = meta.query("SELECT alias, at FROM alias_history WHERE model_id = ? ORDER BY id", (model_id,))
    aliases = sorted({h["alias"] for h in history} | set(serving))
    # vLLM knows an adapter by its id, so the gateway records calls by the adapter that answered.
    calls = meta.query("SELECT key_id, requests, last_at FROM model_calls WHERE model = ? ORDER BY requests DESC",
                       (model_id,))
    return {"model": {k: model[k] for k in ("id", "base_model", "base_digest", "tree_digest", "manifest_digest",
                                             "created_at")},
            "dataset": dataset, "run": run, "promotions": promotions,
            "aliases": [{"name": a, "serving": a in serving, "since": [h["at"] for h in history if h["alias"] == a]}
                        for a in aliases],
            "calls": calls}


# Several owners may hold the same bytes, each under a name of their own: the run's submitter's
# row is the one it trained on by name, and no other owner's name is shown beside the adapter.
_SUBMITTERS_ROW = """
    SELECT digest, name, owner, format, records FROM datasets WHERE digest = :digest
    ORDER BY owner = (SELECT COALESCE((SELECT k.holder FROM api_keys AS k WHERE 'key:' || k.id = r.submitted_by),
                                      :operator) FROM runs AS r WHERE r.id = :run) DESC, created_at
    LIMIT 1"""


def _dataset(airlock: Airlock, digest: str, run_id: str | None) -> dict[str, Any] | None:
    from airlock.access.holders import OPERATOR

    return airlock.meta.one(_SUBMITTERS_ROW, {"digest": digest, "run": run_id, "operator": OPERATOR})
