"""The typed, validated configuration of a LoRA fine-tuning run."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class LoraTrainConfig(BaseModel):
    """Every knob of `finetune.lora`; unknown keys are refused so a typo is never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(8, ge=1, le=256)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    epochs: int = Field(3, ge=1, le=1000)
    learning_rate: float = Field(2e-3, gt=0, le=1.0)
    batch_size: int = Field(4, ge=1, le=1024)
    max_length: int = Field(512, ge=8)
    weight_decay: float = Field(0.0, ge=0.0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0.0)
    seed: int = 0
    # A checkpoint every this many steps (0: only when stopped early); training resumes from it.
    checkpoint_every: int = Field(50, ge=0)

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("name at least one module, or use 'all-linear'")
        return value

    def peft_config(self):
        from peft import LoraConfig, TaskType

        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
        )
