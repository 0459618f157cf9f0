"""The validation set of a run and its loss.

A held-out fraction is chosen by each record's content digest (the records whose sha256 sorts
first), not by the training seed: every run on a dataset holds out the same records whatever its
seed or the order of the file, so runs compare on equal terms.
"""

from __future__ import annotations

import hashlib
import json
import math


def _digest(record: list[dict]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def hold_out(records: list[list[dict]], fraction: float) -> tuple[list[list[dict]], list[list[dict]]]:
    """(training records, validation records), the validation ones `fraction` of the whole,
    at least one, and at least one record left to train on."""
    if not fraction:
        return records, []
    count = min(max(math.ceil(len(records) * fraction), 1), len(records) - 1)
    held = set(sorted(range(len(records)), key=lambda i: _digest(records[i]))[:count])
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


def eval_loss(model, examples, batch_size: int, pad_id: int) -> float:
    """Mean loss per answer token over `examples`, in eval mode and without gradients (no
    generator is drawn from, so an evaluation changes nothing a resume must restore)."""
    import torch

    from airlock.train.loss import answer_loss, keeps_logits
    from airlock.train.tokens import collate, label_count

    selective = keeps_logits(model)
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                ids, labels, mask = (t.to(model.device) for t in collate(examples[start:start + batch_size], pad_id))
                n = label_count(labels)
                loss = answer_loss(model, ids, labels, selective, attention_mask=mask)  # the mean over its n tokens
                total += loss.item() * n
                tokens += n
    finally:
        model.train(was_training)
    return total / tokens if tokens else float("nan")
