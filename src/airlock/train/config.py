"""The typed, validated configuration of a LoRA fine-tuning run."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

METHODS = ("lora", "dora", "rslora", "qlora")


class LoraTrainConfig(BaseModel):
    """Every knob of `finetune.lora`; unknown keys are refused so a typo is never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The adapter
    method: Literal["lora", "dora", "rslora", "qlora"] = "lora"
    rank: int = Field(8, ge=1, le=256)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    # The optimisation
    epochs: int = Field(3, ge=1, le=1000)
    learning_rate: float = Field(2e-3, gt=0, le=1.0)
    batch_size: int = Field(4, ge=1, le=1024)
    gradient_accumulation: int = Field(1, ge=1, le=1024)
    max_length: int = Field(512, ge=8)
    weight_decay: float = Field(0.0, ge=0.0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0.0)
    seed: int = 0
    # How it runs
    precision: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on a GPU that has it
    gradient_checkpointing: bool = False
    # Several short examples share one row (no padding, no attention across examples); auto: on
    # where the model's attention keeps packed examples apart, which a probe checks at start.
    packing: Literal["auto", "on", "off"] = "auto"
    # A checkpoint every this many steps (0: only when stopped early); training resumes from it.
    checkpoint_every: int = Field(50, ge=0)
    # Scale-out (DDP): processes on each host and hosts in all, asked as resources; which hosts
    # and where they meet is the operator's configuration (training.md), never the workflow's.
    # The global batch stays batch_size x gradient_accumulation, dealt out among the processes.
    nproc_per_node: int = Field(1, ge=1, le=64)
    nnodes: int = Field(1, ge=1, le=64)
    # Validation: a held-out fraction of the dataset (or the stage's validation_set), its loss
    # every eval_every steps (0: at the end of each epoch), and early stopping after this many
    # evaluations without a lower loss (0: never). The best evaluation's adapter is the result.
    validation_set: str | None = None
    validation_split: float = Field(0.0, ge=0.0, lt=1.0)
    eval_every: int = Field(0, ge=0)
    early_stopping_patience: int = Field(0, ge=0)

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("name at least one module, or use 'all-linear'")
        return value

    @model_validator(mode="after")
    def _validation_source(self) -> LoraTrainConfig:
        if self.validation_set and self.validation_split:
            raise ValueError("give validation_set or validation_split, not both")
        if (self.eval_every or self.early_stopping_patience) and not self.validates:
            raise ValueError("eval_every and early_stopping_patience need validation_split or validation_set")
        return self

    @property
    def validates(self) -> bool:
        return bool(self.validation_set or self.validation_split)

    def peft_config(self):
        from peft import LoraConfig, TaskType

        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            use_dora=self.method == "dora",
            use_rslora=self.method == "rslora",
        )
