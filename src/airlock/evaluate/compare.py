"""Mean answer loss and exact match of greedy answers, for the base model and a candidate.

Both are measured on the same loaded weights: the base figures come from the PEFT model with
its adapter disabled, so the comparison cannot drift through a second load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from airlock.train.base import load_base
from airlock.train.tokens import collate, encode_chat, prompt_ids


@dataclass
class Scores:
    loss: float
    exact_match: float
    examples: int
    answers: list[dict]

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "answers"}


def _normalise(text: str) -> str:
    return " ".join(text.split())


def score(model, tokenizer, records: list[list[dict]], max_length: int) -> Scores:
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    losses, hits, answers = [], 0, []
    model.eval()
    with torch.no_grad():
        for n, messages in enumerate(records, start=1):
            example = encode_chat(tokenizer, messages, max_length, where=f"eval record {n}")
            ids, labels, mask = (t.to(model.device) for t in collate([example], pad_id))
            losses.append(model(input_ids=ids, attention_mask=mask, labels=labels).loss.item())

            reference = messages[-1]["content"]
            prompt = torch.tensor([prompt_ids(tokenizer, messages[:-1])], device=model.device)
            budget = len(tokenizer(reference, add_special_tokens=False)["input_ids"]) + 16
            out = model.generate(
                input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=budget,
                do_sample=False, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id,
            )
            answer = tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
            match = _normalise(answer) == _normalise(reference)
            hits += match
            answers.append({"prompt": messages[-2]["content"] if len(messages) > 1 else "",
                            "reference": reference, "answer": answer, "match": match})
    count = len(records)
    return Scores(loss=sum(losses) / count, exact_match=hits / count, examples=count, answers=answers)


def compare(base_dir: Path, adapter_dir: Path, records: list[list[dict]], max_length: int) -> dict:
    """Scores of the base model and of base+adapter on the eval records."""
    import torch
    from peft import PeftModel

    torch.manual_seed(0)
    tokenizer, base = load_base(base_dir)
    model = PeftModel.from_pretrained(base, adapter_dir)
    candidate = score(model, tokenizer, records, max_length)
    with model.disable_adapter():
        baseline = score(model, tokenizer, records, max_length)
    return {"base": baseline, "candidate": candidate}


def is_better(candidate: dict, base: dict) -> bool:
    """More exact answers, or as many with a lower loss."""
    if candidate["exact_match"] != base["exact_match"]:
        return candidate["exact_match"] > base["exact_match"]
    return candidate["loss"] < base["loss"]
