"""Tool calling through the gateway: the engine starts with the served model's tool-call parser,
and `tools` with every tool_choice is answered in OpenAI's shape."""

from __future__ import annotations

import json

import openai
import pytest
from tokenizers import Tokenizer

from airlock.config import Settings
from airlock.serve.vllm_server import VllmServer

CHAT = [{"role": "user", "content": "What is the weather in Oslo?"}]
# Strict: vLLM holds a forced call's arguments to the schema only for strict functions.
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather forecast for a city.", "strict": True,
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                   "properties": {"city": {"type": "string", "enum": ["Oslo", "Lima"]},
                                  "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time now.",
    "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, TIME]
NAMES = {"get_weather", "get_time"}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
# The reference tokenizer spells JSON nearly a character a token: the call around the arguments
# alone, {"name": "get_weather", "parameters": ...}, takes about 35.
CALL_TOKENS = 96


def test_engine_command_carries_the_models_tool_call_parser(tmp_path):
    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "qwen2"}')
    cmd = VllmServer(Settings(home=tmp_path), model_dir=model, gpu=False).command()
    assert "--enable-auto-tool-choice" in cmd and cmd[cmd.index("--tool-call-parser") + 1] == "hermes"

    overridden = VllmServer(Settings(home=tmp_path, tool_call_parser="qwen3_coder"), model_dir=model,
                            gpu=False).command()
    assert overridden[overridden.index("--tool-call-parser") + 1] == "qwen3_coder"
    off = VllmServer(Settings(home=tmp_path, tool_call_parser="none"), model_dir=model, gpu=False).command()
    assert "--enable-auto-tool-choice" not in off and "--tool-call-parser" not in off
    extra = "--tool-call-parser=pythonic --enable-auto-tool-choice"
    own = VllmServer(Settings(home=tmp_path, vllm_extra_args=extra), model_dir=model, gpu=False).command()
    assert own.count("--enable-auto-tool-choice") == 1 and "--tool-call-parser" not in own

    (model / "config.json").write_text('{"model_type": "gpt2"}')
    assert "--enable-auto-tool-choice" not in VllmServer(Settings(home=tmp_path), model_dir=model,
                                                         gpu=False).command()


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def no_whitespace(reference_model_dir) -> dict[str, int]:
    """logit_bias that bans whitespace-only tokens. The reference model never saw JSON: decoding
    greedily inside the argument grammar, it pads the object with newlines until max_tokens. A
    trained model ends its JSON on its own."""
    tokenizer = Tokenizer.from_file(str(reference_model_dir / "tokenizer.json"))
    return {str(i): -100 for i in range(tokenizer.get_vocab_size()) if tokenizer.decode([i]).isspace()}


def assert_openai_tool_calls(tool_calls) -> None:
    for call in tool_calls:
        assert call.id and call.type == "function" and call.function.name in NAMES
        assert isinstance(call.function.arguments, str)


@pytest.mark.vllm
@pytest.mark.slow
def test_served_engine_has_auto_tool_choice(vllm_server):
    cmd = vllm_server.command()
    assert cmd[cmd.index("--tool-call-parser") + 1] == "llama3_json"


@pytest.mark.vllm
@pytest.mark.slow
def test_auto_tool_choice_is_answered_in_openai_shape(live_gateway):
    resp = client(live_gateway).chat.completions.create(
        model=live_gateway.settings.serve_base_model, messages=CHAT, tools=TOOLS, tool_choice="auto",
        max_tokens=32, temperature=0)
    choice = resp.choices[0]
    assert resp.object == "chat.completion"
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.role == "assistant"
    # The reference model may or may not call a tool: only the shape is OpenAI's either way.
    assert_openai_tool_calls(choice.message.tool_calls or [])
    if choice.finish_reason == "tool_calls":
        assert choice.message.tool_calls


@pytest.mark.vllm
@pytest.mark.slow
def test_tool_choice_none_calls_no_tool(live_gateway):
    resp = client(live_gateway).chat.completions.create(
        model=live_gateway.settings.serve_base_model, messages=CHAT, tools=TOOLS, tool_choice="none",
        max_tokens=16, temperature=0)
    choice = resp.choices[0]
    assert not choice.message.tool_calls
    assert choice.finish_reason in ("stop", "length")
    assert isinstance(choice.message.content, str)


@pytest.mark.vllm
@pytest.mark.slow
def test_named_function_is_called_with_json_arguments(live_gateway, no_whitespace):
    resp = client(live_gateway).chat.completions.create(
        model=live_gateway.settings.serve_base_model, messages=CHAT, tools=TOOLS, tool_choice=NAMED,
        max_tokens=CALL_TOKENS, temperature=0, logit_bias=no_whitespace)
    calls = resp.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather", resp.choices[0].message.content
    assert_openai_tool_calls(calls)
    arguments = json.loads(calls[0].function.arguments)
    # A strict function's arguments follow its schema.
    assert arguments["city"] in ("Oslo", "Lima") and 1 <= arguments["days"] <= 7


@pytest.mark.vllm
@pytest.mark.slow
def test_named_function_streams_its_arguments(live_gateway, no_whitespace):
    stream = client(live_gateway).chat.completions.create(
        model=live_gateway.settings.serve_base_model, messages=CHAT, tools=TOOLS, tool_choice=NAMED,
        max_tokens=CALL_TOKENS, temperature=0, logit_bias=no_whitespace, stream=True)
    deltas = [call for chunk in stream if chunk.choices for call in chunk.choices[0].delta.tool_calls or []]
    assert len(deltas) > 1  # streamed in pieces, not sent whole at the end
    assert {d.function.name for d in deltas if d.function.name} == {"get_weather"}
    assert deltas[0].id and deltas[0].type == "function"
    arguments = json.loads("".join(d.function.arguments or "" for d in deltas))
    assert isinstance(arguments, dict) and arguments["city"] in ("Oslo", "Lima")


@pytest.mark.vllm
@pytest.mark.slow
def test_a_tool_result_turn_is_rendered_and_answered(live_gateway):
    """The whole loop: the caller sends the call it got and the tool's result back."""
    messages = [*CHAT,
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 1}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 12 C"}]
    resp = client(live_gateway).chat.completions.create(
        model=live_gateway.settings.serve_base_model, messages=messages, tools=TOOLS, max_tokens=16,
        temperature=0)
    assert resp.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert resp.usage.prompt_tokens > 0
