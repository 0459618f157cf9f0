"""The workflow's own gate: a signed candidate's signature, every file digest and the thresholds
its workflow asks, checked against the evaluation inside the signed manifest (not the database,
so a row edited after signing passes nothing).

This is the author's check, and it can only add to the alias's policy (policy.stricter_of): what
an alias serves is decided by the policy an admin set and the approvers it names.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from airlock.context import Airlock
from airlock.errors import GateRefused, IntegrityFailure
from airlock.models.adapters import get_model
from airlock.promotion.signing import verify_model
from airlock.promotion.thresholds import problems_of


class GatePolicy(BaseModel):
    """A workflow's gate parameters; each can make the alias's policy stricter, never weaker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_exact_match: float = Field(0.0, ge=0.0, le=1.0)
    require_better_than_base: bool = True
    better_than_serving: bool | None = None
    margin: float | None = Field(None, ge=0.0, le=1.0)

    def as_policy_fields(self) -> dict:
        return {"min_exact_match": self.min_exact_match, "better_than_base": self.require_better_than_base,
                "better_than_serving": self.better_than_serving, "margin": self.margin}


def check_thresholds(eval_results: dict, policy: GatePolicy) -> list[str]:
    if not eval_results.get("candidate") or not eval_results.get("base"):
        return ["the signed manifest holds no evaluation results"]
    return problems_of(eval_results, min_exact_match=policy.min_exact_match,
                       better_than_base=policy.require_better_than_base)


def check_candidate(airlock: Airlock, model_id: str, policy: GatePolicy | None = None, actor: str = "worker") -> dict:
    """The candidate's signature, files and the workflow's thresholds; GateRefused naming each problem."""
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
    return {"model_id": model_id, "gate": policy.as_policy_fields(), "checks": ["signature", "file digests",
                                                                              "thresholds"],
            "eval": manifest["eval_results"].get("candidate")}
