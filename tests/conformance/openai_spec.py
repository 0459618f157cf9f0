"""The pinned OpenAI document, prepared for the conformance suite. Three changes, each narrow:

- Request schemas are closed to the fields OpenAI documents. Left open, a generator fills every
  body with random extra keys, a server that refuses unknown fields (as OpenAI does, with a 400)
  never gets to answer one, and the 200 bodies, the part worth validating, go untested. Only
  schemas no response uses are touched: responses are validated against OpenAI's own schemas.
- Event streams are described the way OpenAPI 3.2 does (`itemSchema`: one event, its `data` a
  JSON chunk); the 3.1 document names only the chunk, which a validator would otherwise hold each
  raw event to. The `data` of an event has its own media type, STREAM_DATA, whose deserializer
  (in the test module) skips the closing `[DONE]`. Legacy completions stream completion objects,
  as the operation's description says, with `finish_reason` and `usage` null until the last
  chunk as in the chat chunk schema; the document lists no stream for them.
- Errata: a completion that echoes its prompt with logprobs has no logprob for the first prompt
  token (nothing precedes it), so that one entry is null; the document allows numbers only.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SPEC_PATH = Path(__file__).with_name("openai-openapi.yaml")
STREAM_DATA = "application/x-openai-stream-data"
_PREFIX = "#/components/schemas/"


def load_spec() -> dict[str, Any]:
    return yaml.load(SPEC_PATH.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _refs(node: Any):
    if isinstance(node, dict):
        if isinstance(ref := node.get("$ref"), str) and ref.startswith(_PREFIX):
            yield ref.removeprefix(_PREFIX)
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _closure(schemas: dict[str, Any], names) -> set[str]:
    seen: set[str] = set()
    todo = list(names)
    while todo:
        if (name := todo.pop()) not in seen:
            seen.add(name)
            todo.extend(_refs(schemas[name]))
    return seen


def _merge_all_of(schemas: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """One object schema for an allOf of object schemas, so that closing it keeps every member's
    fields; a field two members declare must satisfy both."""
    merged = {k: v for k, v in schema.items() if k != "allOf"} | {"type": "object"}
    properties, required = dict(merged.get("properties", {})), set(merged.get("required", ()))
    for part in schema["allOf"]:
        if "$ref" in part:
            part = schemas[part["$ref"].removeprefix(_PREFIX)]
        if "allOf" in part:
            part = _merge_all_of(schemas, part)
        for name, sub in part.get("properties", {}).items():
            properties[name] = {"allOf": [properties[name], sub]} if name in properties else sub
        required |= set(part.get("required", ()))
    return merged | {"properties": properties, "required": sorted(required)}


def _close(node: Any) -> None:
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict) and "additionalProperties" not in node \
                and set(node.get("required", ())) <= props.keys():
            node["additionalProperties"] = False
        for value in node.values():
            _close(value)
    elif isinstance(node, list):
        for value in node:
            _close(value)


def _event_stream(chunk: str) -> dict[str, Any]:
    data = {"contentMediaType": STREAM_DATA, "contentSchema": {"$ref": _PREFIX + chunk}}
    return {"itemSchema": {"type": "object", "required": ["data"], "properties": {"data": data}}}


def _completion_chunk(schemas: dict[str, Any]) -> dict[str, Any]:
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    choice = chunk["properties"]["choices"]["items"]["properties"]
    for fields, name in ((choice, "finish_reason"), (chunk["properties"], "usage")):
        fields[name] = {"anyOf": [fields[name], {"type": "null"}]}
    return chunk


def _errata(schemas: dict[str, Any]) -> None:
    logprobs = schemas["CreateCompletionResponse"]["properties"]["choices"]["items"]["properties"]["logprobs"]
    entries = next(s for s in logprobs["anyOf"] if s.get("type") == "object")["properties"]
    for name in ("token_logprobs", "top_logprobs"):
        entries[name]["items"] = {"anyOf": [entries[name]["items"], {"type": "null"}]}


def prepare(spec: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    chat = spec["paths"]["/chat/completions"]["post"]["responses"]["200"]["content"]
    chat["text/event-stream"] = _event_stream("CreateChatCompletionStreamResponse")
    legacy = spec["paths"]["/completions"]["post"]["responses"]["200"]["content"]
    schemas["CreateCompletionStreamResponse"] = _completion_chunk(schemas)
    legacy["text/event-stream"] = _event_stream("CreateCompletionStreamResponse")
    _errata(schemas)
    operations = [op for methods in spec["paths"].values() for op in methods.values()]
    requests = _closure(schemas, _refs([op.get("requestBody") for op in operations]))
    responses = _closure(schemas, _refs([op["responses"] for op in operations]))
    for name in sorted(requests - responses):
        if "allOf" in schemas[name]:
            schemas[name] = _merge_all_of(schemas, schemas[name])
    for name in requests - responses:
        _close(schemas[name])
    return spec
