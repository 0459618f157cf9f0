"""Turning chat records into training tensors with the model's own chat template.

Only assistant tokens carry a label, on every assistant turn of a conversation, each up to and
including its end-of-turn token; everything else is -100, so the loss measures answers, not
prompts. Spans are found by rendering the conversation up to each assistant turn, which works for
any template whose rendering of a prefix is a prefix of the whole rendering.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from airlock.errors import InvalidInput

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)

    # Made once, not at every step that uses the example.
    @cached_property
    def ids_tensor(self):
        import torch

        return torch.tensor(self.input_ids, dtype=torch.long)

    @cached_property
    def labels_tensor(self):
        import torch

        return torch.tensor(self.labels, dtype=torch.long)

    @cached_property
    def loss_tokens(self) -> int:
        """Tokens the causal LM loss counts (labels after its one-token shift)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE)


def _render(tokenizer, messages: list[dict], *, generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
    )
    # transformers 5 may hand back a BatchEncoding-like mapping even when asked for plain ids.
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def _turn_end(ids: list[int], start: int, end: int, special: set[int]) -> int:
    """Where an assistant turn's trained span ends: after its end-of-turn token (the last special
    token of the turn: Llama 3's <|eot_id|>, Qwen's <|im_end|>, Mistral's </s>, Gemma's
    <end_of_turn>), so the separator a template writes between turns is not trained."""
    for i in range(end - 1, start, -1):
        if ids[i] in special:
            return i + 1
    return end


def encode_chat(tokenizer, messages: list[dict], max_length: int, where: str = "record") -> Example:
    full = _render(tokenizer, messages, generation_prompt=False)
    special = set(tokenizer.all_special_ids)
    labels = [IGNORE] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], generation_prompt=True)
        end = len(_render(tokenizer, messages[: i + 1], generation_prompt=False))
        if full[: len(prefix)] != prefix:
            raise InvalidInput(f"{where}: the chat template does not render turns as prefixes")
        end = _turn_end(full, len(prefix), end, special)
        labels[len(prefix) : end] = full[len(prefix) : end]
    if len(full) > max_length:
        raise InvalidInput(f"{where}: {len(full)} tokens, longer than max_length {max_length}")
    return Example(input_ids=full, labels=labels)


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Ids of a conversation up to the point where the assistant should answer."""
    return _render(tokenizer, messages, generation_prompt=True)


def collate(examples: list[Example], pad_id: int):
    """Right-pad a batch into tensors; padding is masked out of attention and loss."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = e.ids_tensor
        labels[row, :n] = e.labels_tensor
        mask[row, :n] = 1
    return ids, labels, mask


def label_count(labels) -> int:
    """Tokens the loss counts: labels after the one-token shift of causal LM loss."""
    return int((labels[..., 1:] != IGNORE).sum())


def _balanced_rows(examples: list[Example], capacity: int) -> list[list[Example]]:
    """As few rows as the capacity allows, as even as can be (longest example first, each into
    the shortest row it fits in), so that padding the rows to the longest leaves little."""
    total = sum(len(e.input_ids) for e in examples)
    rows: list[list[Example]] = [[] for _ in range(-(-total // capacity))]
    sizes = [0] * len(rows)
    for e in sorted(examples, key=lambda e: len(e.input_ids), reverse=True):
        fits = [i for i in range(len(rows)) if sizes[i] + len(e.input_ids) <= capacity]
        if not fits:
            rows.append([])
            sizes.append(0)
            fits = [len(rows) - 1]
        i = min(fits, key=lambda i: sizes[i])
        rows[i].append(e)
        sizes[i] += len(e.input_ids)
    return [r for r in rows if r]


def pack(examples: list[Example], capacity: int, pad_id: int):
    """Padding-free rows: examples placed whole into rows of at most `capacity` tokens (as even
    as can be), position ids restarting at each example so the model's mask
    keeps examples apart, and each example's first label dropped so nothing is predicted across
    a boundary. Rows are right-padded to the longest row; padding is a segment of its own.
    Returns (input_ids, labels, position_ids)."""
    import torch

    rows = _balanced_rows(examples, capacity)
    width = max(sum(len(x.input_ids) for x in r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):
        at = 0
        for e in row:
            end = at + len(e.input_ids)
            ids[n, at:end] = e.ids_tensor
            labels[n, at + 1:end] = e.labels_tensor[1:]
            positions[n, at:end] = torch.arange(len(e.input_ids))
            at = end
        positions[n, at:] = torch.arange(width - at)
    return ids, labels, positions
