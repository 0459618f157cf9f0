"""The `serve.vllm` stage: the promoted adapter goes live under its alias, no hand-off."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from airlock.serve.deploy import deploy
from airlock.workflow.stage import StageContext, StageType


class ServeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alias: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def run_serve(ctx: StageContext) -> dict:
    return deploy(ctx.airlock, ctx.find_upstream("model_id"), ctx.params.alias)


SERVE_VLLM = StageType(
    name="serve.vllm",
    params=ServeParams,
    run=run_serve,
    batch=False,
    summary="Verify the promoted adapter again, hot-load it into vLLM, smoke-test it, point the alias at it",
)
