"""The `finetune.lora` recipe: setup, train, save, in that order, nothing hidden.

Deterministic on the CPU for a fixed seed: the seed fixes LoRA initialisation, dropout and the
order of batches, and the saved adapter config is written in a stable order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from airlock.errors import InvalidInput, StageFailed
from airlock.train.config import LoraTrainConfig
from airlock.train.tokens import Example, collate, encode_chat


@dataclass
class StepReport:
    step: int
    total_steps: int
    epoch: int
    loss: float
    tokens: int
    elapsed_s: float


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    trained_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.trained_tokens / self.seconds if self.seconds else 0.0


def device():
    """The GPU where one is present (GPU hosts), else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_base(base_dir: Path):
    """Tokenizer and float32 model of a base folder (safetensors only), on `device()`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the stage reports its own progress
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True)
    return tokenizer, model.to(device())


def encode_dataset(tokenizer, records: list[list[dict]], max_length: int) -> list[Example]:
    problems, examples = [], []
    for n, messages in enumerate(records, start=1):
        try:
            examples.append(encode_chat(tokenizer, messages, max_length, where=f"record {n}"))
        except InvalidInput as exc:
            problems.append(exc.message)
    if problems:
        raise InvalidInput("the dataset does not fit this model", problems=problems)
    return examples


def batches_for_epoch(examples: list[Example], batch_size: int, seed: int, epoch: int) -> list[list[Example]]:
    import torch

    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    shuffled = [examples[i] for i in order.tolist()]
    return [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]


def finetune(
    base_dir: Path,
    records: list[list[dict]],
    config: LoraTrainConfig,
    out_dir: Path,
    on_step: Callable[[StepReport], None] | None = None,
) -> TrainResult:
    import torch
    from peft import get_peft_model

    # setup
    torch.manual_seed(config.seed)
    tokenizer, base = load_base(base_dir)
    model = get_peft_model(base, config.peft_config())
    examples = encode_dataset(tokenizer, records, config.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, weight_decay=config.weight_decay
    )
    steps_per_epoch = -(-len(examples) // config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = lr_scheduler(optimizer, config, total)
    trainable = [p for p in model.parameters() if p.requires_grad]
    result = TrainResult(adapter_dir=out_dir, steps=total)

    # train
    model.train()
    started = time.perf_counter()
    step = 0
    for epoch in range(config.epochs):
        for batch in batches_for_epoch(examples, config.batch_size, config.seed, epoch):
            ids, labels, mask = (t.to(base.device) for t in collate(batch, pad_id))
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            if not torch.isfinite(loss):
                raise StageFailed(f"training diverged: the loss is {loss.item()} at step {step + 1} of {total}; "
                                  f"lower learning_rate (now {config.learning_rate})")
            loss.backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            result.trained_tokens += int(mask.sum())
            result.losses.append(loss.item())
            if on_step:
                on_step(StepReport(step, total, epoch, result.losses[-1], result.trained_tokens,
                                   time.perf_counter() - started))
    result.seconds = time.perf_counter() - started

    # save: PEFT format, safetensors only
    model.save_pretrained(out_dir, safe_serialization=True)
    stabilise_adapter(out_dir, base_name=Path(base_dir).name)
    return result


def lr_scheduler(optimizer, config: LoraTrainConfig, total_steps: int):
    from transformers import get_scheduler

    return get_scheduler(config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps,
                         num_training_steps=total_steps)


def stabilise_adapter(out_dir: Path, base_name: str) -> None:
    """The same training run must yield the same adapter bytes (and content digest) on any host.
    PEFT writes target_modules from a set, in a different order per process, and records the
    base model's absolute path, in the config and in a generated README; the README goes (the
    signed manifest says what the adapter is), the config is made stable."""
    (out_dir / "README.md").unlink(missing_ok=True)
    path = out_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config["base_model_name_or_path"] = base_name
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
