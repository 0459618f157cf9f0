"""The benchmark's training data: the quickstart set, and a larger synthetic chat set.

The synthetic set is generated from a fixed seed, so every run trains on the same bytes; its
answers vary in length so batches carry real padding, as user datasets do.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from airlock.config import REPO_ROOT

QUICKSTART = REPO_ROOT / "examples" / "datasets" / "quickstart.jsonl"
SYSTEM = "You are the airlock assistant."

_SUBJECTS = ["the gateway", "the worker", "the artifact store", "the promotion gate", "vLLM",
             "the audit log", "the trust root", "an API key", "the bundle", "an alias",
             "the metadata database", "a LoRA adapter", "the evaluation stage", "the installer"]
_VERBS = ["checks", "records", "verifies", "serves", "stores", "signs", "refuses", "loads",
          "streams", "rotates", "lists", "restores"]
_OBJECTS = ["every request", "the manifest", "each file digest", "the adapter weights", "a new key",
            "the training run", "the alias switch", "the eval results", "its own log", "the queue",
            "the base model", "the approval"]
_TAILS = ["before anything is loaded", "on every restart", "without a network", "in one transaction",
          "so nothing is lost", "while requests keep flowing", "and reports every problem at once",
          "on the same host", "for the operator", "with a clear error"]


def quickstart_records() -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in QUICKSTART.read_text().splitlines() if line.strip()]


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}."


def synthetic_records(count: int, seed: int = 0) -> list[list[dict]]:
    """`count` single-turn chats; answers of 1 to 5 sentences (roughly 20 to 110 tokens)."""
    rng = random.Random(seed)
    records = []
    for n in range(count):
        subject = rng.choice(_SUBJECTS)
        question = f"Question {n}: what does {subject} do {rng.choice(_TAILS)}?"
        answer = " ".join(_sentence(rng) for _ in range(rng.randint(1, 5)))
        records.append([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
                        {"role": "assistant", "content": answer}])
    return records


def write_jsonl(records: list[list[dict]], path: Path) -> Path:
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in records))
    return path


_CONTEXT = ("The operator carried the bundle across the air gap, verified its signatures against the trust "
            "root, and installed it on the GPU host without any network. ")


def short_chat_records(count: int, seed: int = 0) -> list[list[dict]]:
    """`count` chats with short answers (10 to 60 tokens) and the prompts chat data has: most a
    short question, about one in three a question about a passage given with it (40 to 160
    tokens), as instruction sets with a context field are written."""
    rng = random.Random(seed)
    records = []
    for n in range(count):
        question = f"Question {n}: what does {rng.choice(_SUBJECTS)} do {rng.choice(_TAILS)}?"
        if rng.random() < 0.33:
            question = _CONTEXT * rng.randint(1, 4) + question
        words = [w for _ in range(4) for w in _sentence(rng).split()]
        answer = " ".join(words[: rng.randint(5, 30)]) + "."
        records.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return records
