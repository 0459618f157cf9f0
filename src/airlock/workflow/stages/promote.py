"""The `gate.promote` stage."""

from __future__ import annotations

from airlock.promotion.gate import GatePolicy, promote
from airlock.workflow.stage import StageContext, StageType


def run_gate(ctx: StageContext) -> dict:
    return promote(ctx.airlock, ctx.find_upstream("model_id"), ctx.params)


GATE_PROMOTE = StageType(
    name="gate.promote",
    params=GatePolicy,
    run=run_gate,
    batch=False,
    summary="Verify the candidate's signature, every file digest and the thresholds; record the promotion",
)
