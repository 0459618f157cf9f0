"""The `finetune.lora` stage: train on the run's dataset in a training process of its own
(resuming from the run's last checkpoint), store the adapter, register the model."""

from __future__ import annotations

import shutil
from pathlib import Path

from airlock.datasets.service import load_records
from airlock.models.adapters import register_adapter
from airlock.train.config import LoraTrainConfig
from airlock.workflow.stage import StageContext, StageType
from airlock.workflow.training import job_dir, train_in_child


def run_finetune(ctx: StageContext) -> dict:
    config: LoraTrainConfig = ctx.params
    records = load_records(ctx.airlock, ctx.dataset["digest"])
    validation = load_records(ctx.airlock, ctx.datasets["validation_set"]) if config.validation_set else None
    done = train_in_child(ctx, config.model_dump(), records, ctx.should_stop, validation)
    tree = ctx.airlock.store.put_tree(Path(done["adapter_dir"]))
    model_id = register_adapter(
        ctx.airlock, tree_digest=tree, base_model=ctx.base_model, dataset_digest=ctx.dataset["digest"],
        config=config.model_dump(), run_id=ctx.run_id,
    )
    # The adapter is in the store now; the job's checkpoints served their purpose.
    shutil.rmtree(job_dir(ctx), ignore_errors=True)
    return {
        "model_id": model_id,
        "adapter": tree,
        "steps": done["steps"],
        "final_loss": done["losses"][-1],
        "trained_tokens": done["trained_tokens"],
        "tokens_per_second": round(done["tokens_per_second"], 1),
        "resumed_from": done["resumed_from"],
        "packing": done["packing"],
        "best_step": done["best_step"],
        "best_eval_loss": done["best_eval_loss"],
        "early_stopped_at": done["early_stopped_at"],
    }


FINETUNE_LORA = StageType(
    name="finetune.lora",
    params=LoraTrainConfig,
    run=run_finetune,
    batch=True,
    dataset_params=("validation_set",),
    summary="LoRA fine-tuning of the base model on the workflow's dataset (PEFT, loss on assistant tokens), "
            "in its own process, with checkpoints and exact resume",
)
