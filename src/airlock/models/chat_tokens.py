"""Counting a chat record's tokens exactly as training does, without torch.

`transformers.AutoTokenizer` imports torch (through its generation utilities), and the gateway
must never load torch. transformers' `apply_chat_template(tokenize=True)` is two steps: render
the chat template with its sandboxed jinja renderer, then encode the text without special tokens.
Both are available torch-free: the renderer from `transformers.utils.chat_template_utils` (the
very function transformers calls, so templates behave the same), the encoding from the model's
`tokenizer.json` through the `tokenizers` library that backs transformers' fast tokenizers.
The renderer runs in a child process with a time and a memory limit (models/chat_render.py): the
template is a program that came with the model folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airlock.errors import InvalidInput
from airlock.models.chat_render import TemplateRenderer

# The named special tokens transformers passes into every template (its SPECIAL_TOKENS_ATTRIBUTES).
_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{path.name} of the base model is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    # Saved AddedTokens are {"content": ..., ...}; plain strings are the token itself.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _default_template(folder: Path, config: dict) -> str | None:
    # As transformers loads it: a chat_template.jinja file wins over the config's entry.
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


class ChatTokenizer:
    """The subset of a transformers tokenizer that dataset validation uses: `apply_chat_template`."""

    def __init__(self, folder: Path | str, *, timeout_s: float = 60.0) -> None:
        from tokenizers import Tokenizer

        folder = Path(folder)
        name = folder.name
        if not (folder / "tokenizer.json").is_file():
            raise InvalidInput(f"base model {name!r} has no tokenizer.json, so records cannot be counted "
                               "in tokens; bring the model with its fast tokenizer")
        config = _read_json(folder / "tokenizer_config.json")
        legacy = _read_json(folder / "special_tokens_map.json")
        self.template = _default_template(folder, config)
        if not self.template:
            raise InvalidInput(f"base model {name!r} has no chat template; airlock trains on chat records "
                               "rendered through the model's template")
        self.special_tokens = {k: t for k in _SPECIAL
                               if (t := _token_text(config.get(k, legacy.get(k)))) is not None}
        self.backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # The template is the model folder's program: rendered in a child with limits (chat_render).
        self.renderer = TemplateRenderer(name, self.template, self.special_tokens, timeout_s=timeout_s)

    def render(self, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        return self.renderer.render(messages, add_generation_prompt=add_generation_prompt)

    def close(self) -> None:
        self.renderer.close()

    def __enter__(self) -> ChatTokenizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def apply_chat_template(self, messages: list[dict], *, tokenize: bool = True,
                            add_generation_prompt: bool = False, return_dict: bool = False) -> Any:
        text = self.render(messages, add_generation_prompt=add_generation_prompt)
        if not tokenize:
            return text
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return {"input_ids": ids} if return_dict else ids
