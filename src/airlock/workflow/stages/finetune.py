"""The `finetune.lora` stage: train on the run's dataset, store the adapter, register the model."""

from __future__ import annotations

import tempfile
from pathlib import Path

from airlock.datasets.service import load_records
from airlock.models.adapters import register_adapter
from airlock.train.config import LoraTrainConfig
from airlock.train.recipe import StepReport, finetune
from airlock.workflow.stage import StageContext, StageType


def run_finetune(ctx: StageContext) -> dict:
    config: LoraTrainConfig = ctx.params
    records = load_records(ctx.airlock, ctx.dataset["digest"])
    losses: list[tuple[int, float]] = []

    def on_step(report: StepReport) -> None:
        losses.append((report.step, report.loss))
        ctx.progress(step=report.step, total=report.total_steps, loss=round(report.loss, 4),
                     tokens=report.tokens, elapsed_s=round(report.elapsed_s, 2),
                     force=report.step == report.total_steps)

    with tempfile.TemporaryDirectory(prefix="airlock-adapter-") as tmp:
        result = finetune(ctx.base_path, records, config, Path(tmp) / "adapter", on_step=on_step)
        ctx.metrics("loss", losses)
        tree = ctx.airlock.store.put_tree(result.adapter_dir)
    model_id = register_adapter(
        ctx.airlock, tree_digest=tree, base_model=ctx.base_model, dataset_digest=ctx.dataset["digest"],
        config=config.model_dump(), run_id=ctx.run_id,
    )
    return {
        "model_id": model_id,
        "adapter": tree,
        "steps": result.steps,
        "final_loss": result.losses[-1],
        "trained_tokens": result.trained_tokens,
        "tokens_per_second": round(result.tokens_per_second, 1),
    }


FINETUNE_LORA = StageType(
    name="finetune.lora",
    params=LoraTrainConfig,
    run=run_finetune,
    batch=True,
    summary="LoRA fine-tuning of the base model on the workflow's dataset (PEFT, loss on assistant tokens)",
)
