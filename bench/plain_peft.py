"""The baseline for fine-tuning throughput: a plain PEFT training loop, as a tutorial writes it.

It shares no code with airlock's recipe: its own tokenisation (prompt masked, answer trained),
padding with `pad_sequence`, the stock optimizer and scheduler. To do exactly the same work as
airlock it follows the same seed discipline (seed before loading, so LoRA starts from the same
weights) and visits batches in the same order; the benchmark checks both by comparing losses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

IGNORE = -100


@dataclass
class PlainResult:
    seconds: float  # the training loop only, as airlock's TrainResult.seconds
    tokens: int  # non-padding tokens seen, as airlock counts them
    losses: list[float] = field(default_factory=list)


def _ids(rendered) -> list[int]:
    # transformers 5 can hand back a mapping even when asked for plain ids.
    return list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)


def encode(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a chat whose last turn is the answer; only the answer is trained."""
    full = _ids(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    prompt = _ids(tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True,
                                                return_dict=False))
    return full, [IGNORE] * len(prompt) + full[len(prompt):]


def pad_batch(batch, pad: int):
    """Right-padded (ids, labels, attention mask) from a batch of (ids, labels) tensors."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    ids = pad_sequence([b[0] for b in batch], batch_first=True, padding_value=pad)
    labels = pad_sequence([b[1] for b in batch], batch_first=True, padding_value=IGNORE)
    mask = pad_sequence([torch.ones_like(b[0]) for b in batch], batch_first=True, padding_value=0)
    return ids, labels, mask


def train(base_dir: Path, records: list[list[dict]], config, out_dir: Path,
          on_step: Callable[[int], None] | None = None) -> PlainResult:
    """Train a LoRA adapter with the values of `config` (a LoraTrainConfig) and save it;
    `on_step(tokens so far)` is called after every step."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    # The GPU where there is one, as airlock does, so the two loops always run on the same device.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True).to(device)
    model = get_peft_model(model, LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=config.target_modules))
    encoded = [encode(tokenizer, m) for m in records]
    data = [(torch.tensor(ids), torch.tensor(labels)) for ids, labels in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    per_epoch = -(-len(data) // config.batch_size)
    scheduler = get_scheduler(config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=per_epoch * config.epochs)
    result = PlainResult(seconds=0.0, tokens=0)

    model.train()
    started = time.perf_counter()
    for epoch in range(config.epochs):
        # The same order airlock uses (seeded per epoch), so both loops see identical batches.
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        for i in range(0, len(data), config.batch_size):
            batch = pad_batch([data[j] for j in order[i:i + config.batch_size].tolist()], pad)
            ids, labels, mask = (t.to(device) for t in batch)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            result.tokens += int(mask.sum())
            result.losses.append(loss.item())
            if on_step:
                on_step(result.tokens)
    result.seconds = time.perf_counter() - started

    model.save_pretrained(out_dir, safe_serialization=True)
    return result
