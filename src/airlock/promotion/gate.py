"""Promoting a signed candidate: verify signature, every file digest and the thresholds, then record.

The thresholds are checked against the eval results inside the signed manifest, not the database,
so a row edited after signing cannot promote a model.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from airlock.context import Airlock
from airlock.errors import GateRefused, IntegrityFailure
from airlock.promotion.thresholds import problems_of
from airlock.meta.db import now
from airlock.models.adapters import get_model
from airlock.promotion.signing import verify_model


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_exact_match: float = Field(0.0, ge=0.0, le=1.0)
    require_better_than_base: bool = True


def check_thresholds(eval_results: dict, policy: GatePolicy) -> list[str]:
    if not eval_results.get("candidate") or not eval_results.get("base"):
        return ["the signed manifest holds no evaluation results"]
    return problems_of(eval_results, min_exact_match=policy.min_exact_match,
                       better_than_base=policy.require_better_than_base)


def promote(airlock: Airlock, model_id: str, policy: GatePolicy | None = None, actor: str = "worker") -> dict:
    policy = policy or GatePolicy()
    get_model(airlock, model_id)
    try:
        manifest = verify_model(airlock, model_id)
    except IntegrityFailure as exc:
        airlock.meta.audit(actor, "gate.refused", model_id, reason=str(exc))
        raise GateRefused(f"gate refused {model_id}: {exc.message}", problems=exc.problems) from None
    if problems := check_thresholds(manifest.get("eval_results") or {}, policy):
        airlock.meta.audit(actor, "gate.refused", model_id, reason=problems)
        raise GateRefused(f"gate refused {model_id}: thresholds not met", problems=problems)
    model = get_model(airlock, model_id)
    decision = {"policy": policy.model_dump(), "checks": ["signature", "file digests", "thresholds"],
                "eval": manifest["eval_results"].get("candidate")}
    with airlock.meta.write() as db:
        promotion_id = db["promotions"].insert({
            "model_id": model_id, "manifest_digest": model["manifest_digest"],
            "decision_json": json.dumps(decision, sort_keys=True), "created_at": now(),
        }).last_pk
    airlock.meta.audit(actor, "gate.promoted", model_id, promotion=promotion_id)
    return {"promotion_id": promotion_id, "model_id": model_id, "manifest": model["manifest_digest"]}


def latest_promotion(airlock: Airlock, model_id: str) -> dict | None:
    return airlock.meta.one("SELECT * FROM promotions WHERE model_id = ? ORDER BY id DESC LIMIT 1", (model_id,))
