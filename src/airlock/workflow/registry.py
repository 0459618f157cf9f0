"""The fixed registry of stage types. A workflow can only name what is listed here."""

from __future__ import annotations

from airlock.workflow.stage import StageType


def stage_types() -> dict[str, StageType]:
    # Imported here so that reading a spec does not pull torch into every CLI call.
    from airlock.workflow.stages.evaluate import EVALUATE_COMPARE
    from airlock.workflow.stages.finetune import FINETUNE_LORA
    from airlock.workflow.stages.promote import GATE_PROMOTE
    from airlock.workflow.stages.serve import SERVE_VLLM

    return {t.name: t for t in (FINETUNE_LORA, EVALUATE_COMPARE, GATE_PROMOTE, SERVE_VLLM)}
