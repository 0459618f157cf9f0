"""Scores of greedy answers on an eval set: exact match, "contains the reference", answer loss.

The base model, the champion (the adapter an alias serves now) and the candidate are measured on
the same loaded weights: the champion and the candidate are two adapters of one PEFT model and
the base figures come with the adapters disabled, so the comparison cannot drift through a
second load of the base.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from airlock.train.base import load_base
from airlock.train.tokens import collate, encode_chat, prompt_ids

BASE, CHAMPION, CANDIDATE = "base", "champion", "candidate"
ANSWER_HEADROOM = 16  # tokens a greedy answer may run past its reference's length


@dataclass
class Scores:
    """One model's scores on one eval set; `answers` holds each example's figures."""

    loss: float
    exact_match: float
    contains: float
    examples: int
    answers: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "answers"}


def normalise(text: str) -> str:
    return " ".join(text.split())


def judge(answer: str, reference: str) -> dict:
    """The two string metrics of one answer: the same after whitespace is folded, and whether
    the answer contains the reference (case-folded)."""
    answer_n, reference_n = normalise(answer), normalise(reference)
    return {"match": answer_n == reference_n, "contains": reference_n.casefold() in answer_n.casefold()}


def total(answers: list[dict]) -> Scores:
    """The totals of per-example figures (each with `loss`, `match`, `contains`)."""
    count = len(answers)
    if not count:
        return Scores(loss=0.0, exact_match=0.0, contains=0.0, examples=0, answers=[])
    return Scores(loss=sum(a["loss"] for a in answers) / count,
                  exact_match=sum(a["match"] for a in answers) / count,
                  contains=sum(a["contains"] for a in answers) / count, examples=count, answers=answers)


def score(model, tokenizer, records: list[list[dict]], max_length: int) -> Scores:
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers = []
    model.eval()
    with torch.no_grad():
        for n, messages in enumerate(records, start=1):
            example = encode_chat(tokenizer, messages, max_length, where=f"eval record {n}")
            ids, labels, mask = (t.to(model.device) for t in collate([example], pad_id))
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()

            reference = messages[-1]["content"]
            prompt = torch.tensor([prompt_ids(tokenizer, messages[:-1])], device=model.device)
            budget = len(tokenizer(reference, add_special_tokens=False)["input_ids"]) + ANSWER_HEADROOM
            out = model.generate(
                input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=budget,
                do_sample=False, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id,
            )
            answer = tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
            answers.append({"prompt": messages[-2]["content"] if len(messages) > 1 else "",
                            "reference": reference, "answer": answer, "loss": loss, **judge(answer, reference)})
    return total(answers)


def compare(base_dir: Path, adapter_dir: Path, records: list[list[dict]], max_length: int,
            champion_dir: Path | None = None) -> dict[str, Scores]:
    """Scores of the base model, of base+candidate and, given one, of base+champion."""
    import torch
    from peft import PeftModel

    torch.manual_seed(0)
    tokenizer, base = load_base(base_dir)
    model = PeftModel.from_pretrained(base, adapter_dir, adapter_name=CANDIDATE)
    scores = {CANDIDATE: score(model, tokenizer, records, max_length)}
    if champion_dir is not None:
        model.load_adapter(champion_dir, adapter_name=CHAMPION)
        model.set_adapter(CHAMPION)
        scores[CHAMPION] = score(model, tokenizer, records, max_length)
    with model.disable_adapter():
        scores[BASE] = score(model, tokenizer, records, max_length)
    return scores
