"""Rendering a base model's chat template away from the caller, with a time and a memory limit.

A chat template is a Jinja program that came with the model folder. The sandbox transformers
renders it in stops it from reaching Python objects, not from looping for hours or building a
string of gigabytes; rendered inside the gateway (every record of a dataset is rendered when
`POST /api/runs` pairs it with the model) such a template would hold a request, and the process's
memory, for as long as it liked. So the rendering runs in a child process: the gateway waits for
each record's answer at most `timeout_s` seconds and then kills the child, the child cannot grow
past RENDER_MEMORY_BYTES, and a template larger than TEMPLATE_MAX_BYTES is refused unread.

One child serves one submission (every record of it, one JSON line each way), so its start-up
(importing the renderer, about a second) is paid once per submission, not per record.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from typing import Any

from airlock.children import describe_exit
from airlock.errors import InvalidInput

TEMPLATE_MAX_BYTES = 256 * 1024  # the largest templates models ship are a few tens of KiB
RENDER_MEMORY_BYTES = 2 << 30  # the child's address space after its imports (about 200 MiB)
RENDER_MAX_CHARS = 16 * 1024 * 1024  # one rendered record; no context window is near it
START_TIMEOUT_S = 60.0  # importing the renderer on a busy host


class TemplateRenderer:
    """`render(messages)` through `template` in a child process; InvalidInput (naming the model and
    the limit) when the template is too large, too slow or too hungry. Close it when done."""

    def __init__(self, model: str, template: str, special_tokens: dict[str, str], *, timeout_s: float) -> None:
        self._proc: subprocess.Popen | None = None
        size = len(template.encode("utf-8"))
        if size > TEMPLATE_MAX_BYTES:
            raise InvalidInput(f"base model {model!r}: its chat template is {size} bytes, more than the "
                               f"{TEMPLATE_MAX_BYTES} bytes airlock renders; use a model with a shorter template")
        self.model, self.timeout_s = model, timeout_s
        self._setup = {"template": template, "special_tokens": special_tokens}
        self._buffer = b""
        self._broken: str | None = None

    def render(self, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        if self._broken:  # a limit was hit: every later record would only hit it again
            raise InvalidInput(self._broken)
        if self._proc is None:
            self._start()
        answer = self._ask({"messages": messages, "add_generation_prompt": add_generation_prompt},
                           self.timeout_s, "render a record", "AIRLOCK_CHAT_TEMPLATE_TIMEOUT_S")
        if "error" in answer:
            raise ValueError(answer["error"])  # the template's own refusal of this record
        return answer["text"]

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                stream.close()
            self._proc = None

    def __del__(self) -> None:
        self.close()

    def _start(self) -> None:
        # The child reads the template from stdin, never argv (which every local user can read).
        self._proc = subprocess.Popen([sys.executable, "-m", "airlock.models.chat_render"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      env=_child_env())
        answer = self._ask(self._setup, START_TIMEOUT_S, "compile", "the renderer's start-up limit")
        if "error" in answer:
            self._fail(f"base model {self.model!r}: its chat template does not compile: {answer['error']}")

    def _ask(self, request: dict, timeout_s: float, doing: str, limit: str) -> dict:
        try:
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            self._fail(f"base model {self.model!r}: the chat template's renderer ended before it could {doing}")
        deadline = time.monotonic() + timeout_s
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._fail(f"base model {self.model!r}: its chat template did not {doing} within {timeout_s:g} s "
                           f"(the limit is {limit}); nothing was run")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                ended = describe_exit(self._proc.wait())
                self._fail(f"base model {self.model!r}: the chat template's renderer {ended} while trying to "
                           f"{doing} (its memory limit is {RENDER_MEMORY_BYTES >> 20} MiB)")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _fail(self, message: str) -> None:
        self.close()
        self._broken = message
        raise InvalidInput(message)


def _child_env() -> dict[str, str]:
    from airlock.store import without_store_credentials

    return without_store_credentials(dict(os.environ))


def _serve() -> None:
    """The child: compile the template, then answer one JSON line per record until stdin ends."""
    import resource

    from transformers.utils.chat_template_utils import _compile_jinja_template, render_jinja_template

    resource.setrlimit(resource.RLIMIT_AS, (RENDER_MEMORY_BYTES, RENDER_MEMORY_BYTES))
    out = sys.stdout.buffer
    setup = json.loads(sys.stdin.buffer.readline())
    answer: dict[str, Any] = {"ok": True}
    try:
        # Compiled, not run (transformers caches it for the renders): a syntax error is said once.
        _compile_jinja_template(setup["template"])
    except Exception as exc:  # noqa: BLE001 - any failure to compile is the template's
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    out.write(json.dumps(answer).encode() + b"\n")
    out.flush()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            rendered, _ = render_jinja_template([request["messages"]], chat_template=setup["template"],
                                                add_generation_prompt=request["add_generation_prompt"],
                                                **setup["special_tokens"])
            text = rendered[0]
            answer = ({"text": text} if len(text) <= RENDER_MAX_CHARS else
                      {"error": f"the rendered record has {len(text)} characters, more than {RENDER_MAX_CHARS}"})
        except MemoryError:
            answer = {"error": f"rendering it took more than the renderer's {RENDER_MEMORY_BYTES >> 20} MiB"}
        except Exception as exc:  # noqa: BLE001 - raise_exception() in a template, a bad role order...
            answer = {"error": str(exc)}
        out.write(json.dumps(answer).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    _serve()
