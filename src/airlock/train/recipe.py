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
from airlock.train import checkpoint
from airlock.train.config import LoraTrainConfig
from airlock.train.tokens import Example, collate, encode_chat


@dataclass
class StepReport:
    step: int
    total_steps: int
    epoch: int
    loss: float
    tokens: int  # trained so far, this run
    elapsed_s: float  # of training in this process
    learning_rate: float = 0.0
    grad_norm: float = 0.0
    tokens_per_second: float = 0.0  # of this step


@dataclass
class Controls:
    """How the caller steers training from outside: where checkpoints go (training resumes from
    the latest there), and a question asked at every step boundary."""

    checkpoints: Path | None = None
    should_stop: Callable[[], str | None] = lambda: None  # a reason to stop, after a checkpoint
    on_step: Callable[[StepReport], None] | None = None
    on_checkpoint: Callable[[int, Path], None] | None = None
    on_resume: Callable[[int], None] | None = None


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)  # every step's, those before a resume too
    trained_tokens: int = 0
    seconds: float = 0.0
    stopped: str | None = None  # the reason training stopped early, after its checkpoint
    resumed_from: int | None = None  # the checkpoint's step this process started from
    resumed_tokens: int = 0  # trained before that checkpoint

    @property
    def tokens_per_second(self) -> float:
        """Of the training this process did."""
        return (self.trained_tokens - self.resumed_tokens) / self.seconds if self.seconds else 0.0


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
    controls: Controls | None = None,
) -> TrainResult:
    import torch
    from peft import get_peft_model

    controls = controls or Controls(on_step=on_step)
    # setup
    torch.manual_seed(config.seed)
    tokenizer, base = load_base(base_dir)
    model = get_peft_model(base, config.peft_config())
    examples = encode_dataset(tokenizer, records, config.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(examples) // config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = lr_scheduler(optimizer, config, total)

    # resume: from the latest complete checkpoint, every generator included
    progress, resumed_from = checkpoint.Progress(), None
    if controls.checkpoints is not None:
        checkpoint.discard_partial(controls.checkpoints)
        resumed_from = checkpoint.latest_step(controls.checkpoints)
        if resumed_from is not None:
            progress = checkpoint.restore(checkpoint.path_of(controls.checkpoints, resumed_from),
                                          model, optimizer, scheduler)
            if controls.on_resume:
                controls.on_resume(resumed_from)
    result = TrainResult(adapter_dir=out_dir, steps=total, losses=progress.losses,
                         trained_tokens=progress.trained_tokens, resumed_from=resumed_from,
                         resumed_tokens=progress.trained_tokens)

    # train
    model.train()
    started = time.perf_counter()
    for epoch in range(progress.epoch, config.epochs):
        batches = batches_for_epoch(examples, config.batch_size, config.seed, epoch)
        for batch in batches[progress.batch_in_epoch:]:
            step_started = time.perf_counter()
            ids, labels, mask = (t.to(base.device) for t in collate(batch, pad_id))
            learning_rate = optimizer.param_groups[0]["lr"]
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            if not torch.isfinite(loss):
                raise StageFailed(f"training diverged: the loss is {loss.item()} at step {progress.step + 1} of "
                                  f"{total}; lower learning_rate (now {config.learning_rate})")
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm or float("inf"))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens = int(mask.sum())
            progress.step += 1
            progress.batch_in_epoch += 1
            progress.trained_tokens += tokens
            progress.losses.append(loss.item())
            result.trained_tokens = progress.trained_tokens
            if controls.on_step:
                controls.on_step(StepReport(progress.step, total, epoch, progress.losses[-1], progress.trained_tokens,
                                            time.perf_counter() - started, learning_rate, float(grad_norm),
                                            tokens / (time.perf_counter() - step_started)))
            if progress.step == total:
                continue  # the last step's state is the adapter itself, saved below
            stop = controls.should_stop()
            due = config.checkpoint_every and progress.step % config.checkpoint_every == 0
            if controls.checkpoints is not None and (stop or due):
                path = checkpoint.save(controls.checkpoints, model, optimizer, scheduler, progress)
                if controls.on_checkpoint:
                    controls.on_checkpoint(progress.step, path)
            if stop:
                result.stopped, result.seconds = stop, time.perf_counter() - started
                return result
        progress.epoch, progress.batch_in_epoch = epoch + 1, 0
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
