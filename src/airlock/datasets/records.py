"""Checks and normalisation of one JSONL record, in any of the four accepted formats: OpenAI chat
(`messages`), prompt/completion, ShareGPT (`conversations` of `from`/`value` turns) and Alpaca
(`instruction`, optional `input` and `system`, `output`).

A record check never raises: it returns the problems it found (each naming the field) and, when
there were none, the record as a list of `{"role", "content"}` messages. Training, evaluation and
the length check all consume that one normalised shape, so a format only matters here.
"""

from __future__ import annotations

from typing import Any

CHAT = "chat"
PROMPT_COMPLETION = "prompt_completion"
SHAREGPT = "sharegpt"
ALPACA = "alpaca"
FORMATS = (CHAT, PROMPT_COMPLETION, SHAREGPT, ALPACA)
# ShareGPT's speakers as the exports of common tools name them.
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}

ROLES = ("system", "user", "assistant")

Messages = list[dict[str, str]]


def json_type(value: Any) -> str:
    """The JSON name of a value's type, as a user who wrote the file would call it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def detect_format(record: dict[str, Any]) -> str | None:
    """The format a record is written in, or None when it names neither."""
    # `messages` wins when both appear: a chat record may carry unrelated extra keys.
    if "messages" in record:
        return CHAT
    if "conversations" in record:
        return SHAREGPT
    if "instruction" in record or "output" in record:
        return ALPACA
    if "prompt" in record or "completion" in record:
        return PROMPT_COMPLETION
    return None


def _text(value: Any, field: str, problems: list[str], *, present: bool) -> str | None:
    if not present:
        problems.append(f"{field}: missing")
        return None
    if not isinstance(value, str):
        problems.append(f"{field}: expected a string, got {json_type(value)}")
        return None
    if not value.strip():
        problems.append(f"{field}: empty")
        return None
    return value


def check_chat(record: dict[str, Any]) -> tuple[Messages | None, list[str]]:
    problems: list[str] = []
    if "messages" not in record:
        return None, ["messages: missing"]
    messages = record["messages"]
    if not isinstance(messages, list):
        return None, [f"messages: expected an array of messages, got {json_type(messages)}"]
    if not messages:
        return None, ["messages: empty array (a record needs at least one user and one assistant message)"]

    out: Messages = []
    roles_ok = True
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.append(f"{where}: expected an object, got {json_type(message)}")
            roles_ok = False
            continue
        role = message.get("role")
        if "role" not in message:
            problems.append(f"{where}.role: missing")
            roles_ok = False
        elif not isinstance(role, str) or role not in ROLES:
            shown = repr(role) if isinstance(role, str) else json_type(role)
            problems.append(f"{where}.role: {shown} is not one of {', '.join(ROLES)}")
            roles_ok = False
        content = _text(message.get("content"), f"{where}.content", problems, present="content" in message)
        if isinstance(role, str) and content is not None:
            out.append({"role": role, "content": content})

    # With a broken role the missing assistant is usually that same message; saying so twice
    # would send the user looking for a second mistake that is not there.
    if roles_ok and not any(m.get("role") == "assistant" for m in messages if isinstance(m, dict)):
        problems.append("messages: no assistant message (nothing for the model to learn to answer)")
    return (None if problems else out), problems


def _required(record: dict[str, Any], fields: tuple[str, ...], problems: list[str]) -> list[str | None]:
    return [_text(record.get(f), f, problems, present=f in record) for f in fields]


def check_prompt_completion(record: dict[str, Any]) -> tuple[Messages | None, list[str]]:
    problems: list[str] = []
    prompt, completion = _required(record, ("prompt", "completion"), problems)
    if problems:
        return None, problems
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], []


def check_sharegpt(record: dict[str, Any]) -> tuple[Messages | None, list[str]]:
    turns = record["conversations"]
    if not isinstance(turns, list):
        return None, [f"conversations: expected an array of turns, got {json_type(turns)}"]
    if not turns:
        return None, ["conversations: empty array (a record needs at least one human and one gpt turn)"]
    problems: list[str] = []
    out: Messages = []
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            problems.append(f"{where}: expected an object, got {json_type(turn)}")
            continue
        speaker = turn.get("from")
        if "from" not in turn:
            problems.append(f"{where}.from: missing")
        elif not isinstance(speaker, str) or speaker not in SHAREGPT_ROLES:
            shown = repr(speaker) if isinstance(speaker, str) else json_type(speaker)
            problems.append(f"{where}.from: {shown} is not one of {', '.join(SHAREGPT_ROLES)}")
        value = _text(turn.get("value"), f"{where}.value", problems, present="value" in turn)
        if isinstance(speaker, str) and speaker in SHAREGPT_ROLES and value is not None:
            out.append({"role": SHAREGPT_ROLES[speaker], "content": value})
    if not problems and not any(m["role"] == "assistant" for m in out):
        problems.append("conversations: no gpt turn (nothing for the model to learn to answer)")
    return (None if problems else out), problems


def check_alpaca(record: dict[str, Any]) -> tuple[Messages | None, list[str]]:
    problems: list[str] = []
    instruction, output = _required(record, ("instruction", "output"), problems)
    extra = {}
    for optional in ("input", "system"):  # may be absent or empty, as Alpaca files write them
        value = record.get(optional, "")
        if not isinstance(value, str):
            problems.append(f"{optional}: expected a string, got {json_type(value)}")
        extra[optional] = value if isinstance(value, str) else ""
    if problems:
        return None, problems
    prompt = instruction + (f"\n\n{extra['input']}" if extra["input"].strip() else "")
    system = [{"role": "system", "content": extra["system"]}] if extra["system"].strip() else []
    return [*system, {"role": "user", "content": prompt}, {"role": "assistant", "content": output}], []


CHECKS = {CHAT: check_chat, PROMPT_COMPLETION: check_prompt_completion, SHAREGPT: check_sharegpt,
          ALPACA: check_alpaca}
# How each format's record is named in a length problem: the fields the tokens came from.
LENGTH_FIELDS = {CHAT: "messages", PROMPT_COMPLETION: "prompt+completion", SHAREGPT: "conversations",
                 ALPACA: "instruction+input+output"}


def describe(fmt: str) -> str:
    return {CHAT: "chat (messages)", PROMPT_COMPLETION: "prompt/completion", SHAREGPT: "ShareGPT (conversations)",
            ALPACA: "Alpaca (instruction/output)"}[fmt]
