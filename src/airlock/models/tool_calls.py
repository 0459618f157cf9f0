"""Which vLLM tool-call parser reads a base model's tool calls, from its config.json model_type.

vLLM needs `--enable-auto-tool-choice --tool-call-parser NAME` before it answers a request
with tools (unless its tool_choice is "none"), and each family writes calls in its own format. Some
parsers also need a marker token in the vocabulary and stop vLLM at start without it: many
models share a model_type with a tool-calling family without having learnt its format (Llama 2
is a `llama` without Llama 3's `<|python_tag|>`), so the table names that token and such a
model gets no parser rather than an engine that does not start.
"""

from __future__ import annotations

import json
from pathlib import Path

# model_type -> (vLLM parser name, tokens it needs in the vocabulary). Names as vLLM 0.32
# registers them (vllm/tool_parsers/__init__.py); the tokens as its parsers look them up.
PARSERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "llama": ("llama3_json", ("<|python_tag|>",)),      # Llama 3.1 and later
    "llama4": ("llama4_pythonic", ()),
    "mistral": ("mistral", ("[TOOL_CALLS]",)),          # v0.3 and later
    "mixtral": ("mistral", ("[TOOL_CALLS]",)),
    "qwen2": ("hermes", ()),                            # Qwen2.5 writes <tool_call>{json}
    "qwen2_moe": ("hermes", ()),
    "qwen3": ("hermes", ()),
    "qwen3_moe": ("hermes", ()),                        # Qwen3-Coder wants qwen3_coder: override
    "granite": ("granite", ()),
    "internlm2": ("internlm", ()),
    "jamba": ("jamba", ("<tool_calls>", "</tool_calls>")),
    "glm4_moe": ("glm45", ()),
    "gpt_oss": ("openai", ()),
}
# The override that turns tool calling off for the served model.
NO_PARSER = "none"


def tool_call_parser(folder: Path, override: str = "") -> str | None:
    """The parser vLLM should use for the model in `folder`, or None for no tool calling.

    `override` (AIRLOCK_TOOL_CALL_PARSER for the served model) wins unchecked: vLLM refuses
    a wrong name at start and says why. "none" turns tool calling off.
    """
    if override:
        return None if override == NO_PARSER else override
    folder = Path(folder)
    model_type = _read_json(folder / "config.json").get("model_type")
    parser, needed = PARSERS.get(model_type, (None, ())) if isinstance(model_type, str) else (None, ())
    if parser is None or not needed:
        return parser
    vocab = _vocabulary(folder)
    # Without tokenizer.json (a sentencepiece or mistral-common tokenizer) there is nothing
    # cheap to read, so the family alone decides.
    if vocab is not None and not all(token in vocab for token in needed):
        return None
    return parser


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _vocabulary(folder: Path) -> set[str] | None:
    """The tokens of the model's tokenizer.json: its added tokens (where markers live) and its
    vocabulary; None without one."""
    data = _read_json(folder / "tokenizer.json")
    if not data:
        return None
    tokens = {t.get("content") for t in data.get("added_tokens") or [] if isinstance(t, dict)}
    model = data.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(vocab, dict):
        tokens.update(vocab)
    return tokens
