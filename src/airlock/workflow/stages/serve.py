"""The `serve.vllm` stage: the candidate goes to its alias's gate, no hand-off.

It is staged at once under `ALIAS.candidate-N`; the alias itself switches as soon as the alias's
policy is satisfied: at once where it asks no approvals, else when the approvers have approved.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from airlock.workflow.gatekeeper import propose
from airlock.workflow.stage import StageContext, StageType


class ServeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alias: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    max_length: int = Field(512, ge=8)


def run_serve(ctx: StageContext) -> dict:
    gate = next((out["gate"] for out in ctx.upstream.values() if "gate" in out), {})
    ctx.progress(force=True, phase="the alias's gate")
    return propose(ctx.airlock, model_id=ctx.find_upstream("model_id"), alias=ctx.params.alias, run_id=ctx.run_id,
                   base_path=ctx.base_path, workflow_gate={k: v for k, v in gate.items() if v is not None},
                   max_length=ctx.params.max_length)


SERVE_VLLM = StageType(
    name="serve.vllm",
    params=ServeParams,
    run=run_serve,
    batch=False,
    summary="The alias's policy: evaluate base, champion and candidate on its eval set, stage the candidate as "
            "ALIAS.candidate-N, and switch the alias once the policy's approvals are in",
)
