"""What a stored dataset holds, for people to look at: its size in tokens, the spread of its record
lengths, and its first records.

Tokens are counted with a model's own tokenizer file (`tokenizer.json`, through the `tokenizers`
library, so no torch is needed), over the text of every message; the chat template's own tokens
are not counted, so a record trains on a few tokens more than it shows here.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from airlock.context import Airlock
from airlock.datasets.service import Reader, get_dataset, load_records

BINS = 12


def histogram(lengths: list[int], bins: int = BINS) -> list[dict[str, int]]:
    """Equal-width bins from the shortest length to the longest: [{low, high, count}], high
    exclusive."""
    if not lengths:
        return []
    low, top = min(lengths), max(lengths)
    width = max(1, math.ceil((top - low + 1) / bins))
    counts = [0] * ((top - low) // width + 1)
    for n in lengths:
        counts[(n - low) // width] += 1
    return [{"low": low + i * width, "high": low + (i + 1) * width, "count": c} for i, c in enumerate(counts)]


def record_lengths(records: list[list[dict]], tokenizer_file: Path | None) -> tuple[list[int], str]:
    """(length of each record, the unit): tokens with the tokenizer where one is given, else words."""
    texts = [" ".join(str(m.get("content") or "") for m in messages) for messages in records]
    if tokenizer_file is not None and tokenizer_file.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        return [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)], "tokens"
    return [len(t.split()) for t in texts], "words"


# A dataset never changes under its digest, so what was counted once holds for good; a few are kept.
_COUNTED: OrderedDict[tuple[str, str, int], dict[str, Any]] = OrderedDict()
_KEEP = 16
_LOCK = threading.Lock()  # pages are rendered in a thread pool


def profile(airlock: Airlock, digest_or_name: str, *, reader: Reader, tokenizer_file: Path | None = None,
            preview: int = 5) -> dict[str, Any]:
    """The dataset's row, its total and per-record lengths as a histogram, and its first records,
    if `reader` may read it."""
    row = get_dataset(airlock, digest_or_name, reader=reader)
    cache_key = (row["digest"], str(tokenizer_file), preview)
    with _LOCK:
        counted = _COUNTED.get(cache_key)
    if counted is None:
        records = load_records(airlock, row["digest"])
        lengths, unit = record_lengths(records, tokenizer_file)
        counted = {"unit": unit, "total": sum(lengths), "longest": max(lengths, default=0),
                   "mean": round(sum(lengths) / len(lengths), 1) if lengths else 0,
                   "histogram": histogram(lengths), "preview": records[:preview]}
    with _LOCK:
        _COUNTED[cache_key] = counted
        _COUNTED.move_to_end(cache_key)
        while len(_COUNTED) > _KEEP:
            _COUNTED.popitem(last=False)
    return {**row, **counted}
