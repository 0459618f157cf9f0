"""The `finetune.lora` recipe: setup, train, save, in that order, nothing hidden.

Deterministic on the CPU for a fixed seed: the seed fixes LoRA initialisation, dropout and the
order of batches, and the saved adapter config is written in a stable order.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from airlock.errors import InvalidInput, StageFailed
from airlock.train import checkpoint
from airlock.train.config import LoraTrainConfig
from airlock.train.base import attention_of, device, load_base, packs_apart, training_dtype
from airlock.train.distributed import World, wrap
from airlock.train.loss import answer_loss, keeps_logits
from airlock.train.tokens import Example, collate, encode_chat, pack
from airlock.train.validation import eval_loss, hold_out


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
    on_resume: Callable[[int, checkpoint.Progress], None] | None = None
    on_eval: Callable[[int, float], None] | None = None
    on_setup: Callable[[dict], None] | None = None  # what training will do, before its first step
    world: World = field(default_factory=World)  # the processes of a torchrun job


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
    eval_losses: list[list[float]] = field(default_factory=list)  # [step, eval loss] pairs
    best_step: int | None = None  # the evaluation whose adapter was saved
    best_eval_loss: float | None = None
    early_stopped_at: int | None = None
    packing: bool = False
    packing_note: str = ""

    @property
    def tokens_per_second(self) -> float:
        """Of the training this process did."""
        return (self.trained_tokens - self.resumed_tokens) / self.seconds if self.seconds else 0.0


def encode_dataset(tokenizer, records: list[list[dict]], max_length: int, what: str = "record") -> list[Example]:
    problems, examples = [], []
    for n, messages in enumerate(records, start=1):
        try:
            examples.append(encode_chat(tokenizer, messages, max_length, where=f"{what} {n}"))
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
    validation_records: list[list[dict]] | None = None,
) -> TrainResult:
    import torch
    from peft import get_peft_model, set_peft_model_state_dict

    controls = controls or Controls(on_step=on_step)
    # setup
    torch.manual_seed(config.seed)
    tokenizer, base = load_base(base_dir, config.precision, quantize_4bit=config.method == "qlora")
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(base, config.peft_config())
    world = controls.world
    trained = wrap(model, world)
    if validation_records is None:
        records, validation_records = hold_out(records, config.validation_split)
    examples = encode_dataset(tokenizer, records, config.max_length)
    validation = encode_dataset(tokenizer, validation_records, config.max_length, what="validation record")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    packing, packing_note = choose_packing(config, model)
    selective = keeps_logits(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(trainable, config)
    batches = -(-len(examples) // config.batch_size)  # ceiling division: a short last batch still counts
    steps_per_epoch = -(-batches // config.gradient_accumulation)
    total = steps_per_epoch * config.epochs
    scheduler = lr_scheduler(optimizer, config, total)
    autocast = torch.autocast(device().type, dtype=torch.bfloat16) if training_dtype(config.precision) == \
        torch.bfloat16 else contextlib.nullcontext()

    if controls.on_setup and world.main:
        controls.on_setup({"total_steps": total, "examples": len(examples), "validation_examples": len(validation),
                           "packing": packing, "packing_note": packing_note})

    # resume: from the latest complete checkpoint, every generator included
    progress, resumed_from, best_state = checkpoint.Progress(), None, None
    if controls.checkpoints is not None:
        checkpoint.discard_partial(controls.checkpoints)
        resumed_from = checkpoint.latest_step(controls.checkpoints)
        if resumed_from is not None:
            progress = checkpoint.restore(checkpoint.path_of(controls.checkpoints, resumed_from),
                                          model, optimizer, scheduler)
            if progress.best_step is not None:
                best_state = checkpoint.adapter_tensors(checkpoint.path_of(controls.checkpoints, progress.best_step))
            if controls.on_resume:
                controls.on_resume(resumed_from, progress)
    result = TrainResult(adapter_dir=out_dir, steps=total, losses=progress.losses, eval_losses=progress.eval_losses,
                         trained_tokens=progress.trained_tokens, resumed_from=resumed_from,
                         resumed_tokens=progress.trained_tokens, packing=packing, packing_note=packing_note)

    writer = checkpoint.Writer(controls.checkpoints, controls.on_checkpoint) if controls.checkpoints else None

    # train
    model.train()
    early_stop = False
    with settled_heap():
        started = time.perf_counter()
        for epoch in range(progress.epoch, config.epochs):
            groups = steps_for_epoch(examples, config, epoch)
            for number, group in enumerate(groups[progress.steps_in_epoch:], start=progress.steps_in_epoch + 1):
                step_started = time.perf_counter()
                learning_rate = optimizer.param_groups[0]["lr"]
                loss, tokens = train_step(trained, group, world, pad_id, packing, config, autocast, selective)
                if not math.isfinite(loss):
                    raise StageFailed(f"training diverged: the loss is {loss} at step {progress.step + 1} of "
                                      f"{total}; lower learning_rate (now {config.learning_rate})")
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm or float("inf"))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                progress.step += 1
                progress.steps_in_epoch = number
                progress.trained_tokens += tokens
                progress.losses.append(loss)
                result.trained_tokens = progress.trained_tokens
                if controls.on_step and world.main:
                    controls.on_step(StepReport(progress.step, total, epoch, loss, progress.trained_tokens,
                                                time.perf_counter() - started, learning_rate, float(grad_norm),
                                                tokens / (time.perf_counter() - step_started)))
                improved = False
                every = progress.step % config.eval_every == 0 if config.eval_every else number == len(groups)
                if validation and (every or progress.step == total):
                    improved, early_stop = evaluate_now(model, validation, config, pad_id, progress, controls)
                    if improved:
                        best_state = checkpoint.adapter_tensors_of(model)
                if progress.step == total or early_stop:
                    break  # the last state is the adapter itself, saved below
                stop = world.agree(controls.should_stop() if world.main else None)
                due = config.checkpoint_every and progress.step % config.checkpoint_every == 0
                if writer is not None and (stop or due or improved) and world.main:
                    writer.submit(model, optimizer, scheduler, progress)
                if stop:
                    if writer is not None:
                        writer.wait()
                    result.stopped, result.seconds = stop, time.perf_counter() - started
                    return result
            if early_stop:
                result.early_stopped_at = progress.step
                break
            progress.epoch, progress.steps_in_epoch = epoch + 1, 0
    if writer is not None:
        writer.wait()  # a checkpoint that could not be written fails the run here at the latest
    result.seconds = time.perf_counter() - started

    # save: the best evaluation's adapter where there was validation, PEFT format, safetensors only
    if best_state is not None and progress.best_step != progress.step:
        set_peft_model_state_dict(model, best_state)
    result.best_step, result.best_eval_loss = progress.best_step, progress.best_eval_loss
    if world.main:
        model.save_pretrained(out_dir, safe_serialization=True)
        stabilise_adapter(out_dir, base_name=Path(base_dir).name)
    world.barrier()
    return result


@contextlib.contextmanager
def settled_heap():
    """While training, Python's cycle collector looks only at objects made after setup: a full
    collection over the model's and the libraries' objects took 117 ms on the CPU (380,000
    objects), twenty quickstart steps, at moments no one chooses. They are collectable again after."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def choose_packing(config: LoraTrainConfig, model) -> tuple[bool, str]:
    """Whether to pack, and the sentence that says why."""
    if config.packing == "off":
        return False, "packing off (packing: off)"
    if packs_apart(model):
        return True, "packing on: examples share rows, each attending only to itself"
    why = (f"this model's attention ({attention_of(model)}) lets examples packed into one row see each other")
    if config.packing == "on":
        raise InvalidInput(f"packing: on, but {why}; set packing: off (or auto)")
    return False, f"packing off: {why}"


def steps_for_epoch(examples: list[Example], config: LoraTrainConfig, epoch: int) -> list[list[list[Example]]]:
    """The epoch's steps, each `gradient_accumulation` micro-batches of `batch_size` examples."""
    batches = batches_for_epoch(examples, config.batch_size, config.seed, epoch)
    every = config.gradient_accumulation
    return [batches[i:i + every] for i in range(0, len(batches), every)]


def train_step(model, group: list[list[Example]], world: World, pad_id: int, packing: bool,
               config: LoraTrainConfig, autocast, selective: bool = False) -> tuple[float, int]:
    """Forward and backward over this process's share of one step, in micro-batches of
    `batch_size`, gradients summed and exchanged once; the loss is a mean over every answer token
    of the whole step (so accumulation, and several processes, equal one large batch).
    Returns (loss, tokens) of the whole step."""
    examples = [e for batch in group for e in batch]
    items = sum(e.loss_tokens for e in examples)
    mine, weight = world.share(examples)
    micro = [mine[i:i + config.batch_size] for i in range(0, len(mine), config.batch_size)]
    device_of = next(model.parameters()).device
    # Packed rows need the model to see no cache, or it would not look for packed examples; a
    # padded batch is faster with the model's default (measured: 8% a step with use_cache=False).
    no_cache = {"use_cache": False} if packing else {}
    loss = 0.0
    for n, batch in enumerate(micro):
        if packing:
            ids, labels, positions = pack(batch, config.max_length, pad_id)
            tensors = {"input_ids": ids, "labels": labels, "position_ids": positions}
        else:
            ids, labels, mask = collate(batch, pad_id)
            tensors = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        tensors = {k: v.to(device_of) for k, v in tensors.items()}
        # Gradients are exchanged between processes once, after the last micro-batch.
        sync = contextlib.nullcontext() if n == len(micro) - 1 or world.size == 1 else model.no_sync()
        # The model's loss is the mean over this micro-batch's answer tokens; scaled to their
        # share of the step's, the micro-batches add up to the mean over the whole step.
        share = sum(e.loss_tokens for e in batch) / items
        # Only the loss is kept: holding the whole output (the logits) through backward cost 2-3%
        # a step on the CPU (measured), the allocator finding no block to reuse for their gradient.
        with sync, autocast:
            micro_loss = answer_loss(model, **tensors, selective=selective, **no_cache)
        factor = share * weight * world.size
        with sync:
            (micro_loss if factor == 1.0 else micro_loss * factor).backward()
        loss += micro_loss.item() * share * weight
    return world.all_sum(loss), sum(len(e.input_ids) for e in examples)


def evaluate_now(model, validation: list[Example], config: LoraTrainConfig, pad_id: int,
                 progress: checkpoint.Progress, controls: Controls) -> tuple[bool, bool]:
    """Record the eval loss at this step; (a new best, patience exhausted)."""
    loss = eval_loss(model, validation, config.batch_size, pad_id)
    progress.eval_losses.append([progress.step, loss])
    if controls.on_eval:
        controls.on_eval(progress.step, loss)
    if progress.best_eval_loss is None or loss < progress.best_eval_loss:
        progress.best_step, progress.best_eval_loss, progress.evals_without_improvement = progress.step, loss, 0
        return True, False
    progress.evals_without_improvement += 1
    patience = config.early_stopping_patience
    return False, bool(patience and progress.evals_without_improvement >= patience)


def adamw(parameters: list, config: LoraTrainConfig):
    """AdamW as one fused kernel where torch has one for these parameters' device and dtype, else
    its default. Fused, a step of the optimizer took 0.15 ms instead of 0.76 ms on the CPU for the
    quickstart's adapter (28 tensors), a tenth of the whole step; same update rule, same state."""
    import torch

    settings = {"lr": config.learning_rate, "weight_decay": config.weight_decay}
    try:
        return torch.optim.AdamW(parameters, fused=True, **settings)
    except RuntimeError:  # no fused kernel for this device or dtype
        return torch.optim.AdamW(parameters, **settings)


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
