"""The `gate.promote` stage: the workflow's own check of its candidate."""

from __future__ import annotations

from airlock.promotion.gate import GatePolicy, check_candidate
from airlock.workflow.stage import StageContext, StageType


def run_gate(ctx: StageContext) -> dict:
    return check_candidate(ctx.airlock, ctx.find_upstream("model_id"), ctx.params)


GATE_PROMOTE = StageType(
    name="gate.promote",
    params=GatePolicy,
    run=run_gate,
    batch=False,
    summary="Verify the candidate's signature, every file digest and the workflow's thresholds (which can only "
            "make the alias's policy stricter)",
)
