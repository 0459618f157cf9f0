"""Rendering a base model's chat template away from the caller, with a time and a memory limit.

A chat template is a Jinja program that came with the model folder. The sandbox transformers
renders it in stops it from reaching Python objects, not from looping for hours or building a
string of gigabytes; rendered inside the gateway (every record of a dataset is rendered when
`POST /api/runs` pairs it with the model) such a template would hold a request, and the process's
memory, for as long as it liked. So the rendering runs in a child process: the gateway waits for
a submission's records at most `timeout_s` seconds in all and then kills the child, which cannot grow
past RENDER_MEMORY_BYTES, and a template larger than TEMPLATE_MAX_BYTES is refused unread.

A child serves a submission's records one JSON line each way, and then waits for the next
submission with the same template: its start-up (importing the renderer, about a second) is paid
once per process and template, not per submission or record. The time limit is for all the records
of a submission together, so a slow template cannot hold a request for records × limit.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from typing import Any

from airlock.children import describe_exit
from airlock.errors import InvalidInput

TEMPLATE_MAX_BYTES = 256 * 1024  # the largest templates models ship are a few tens of KiB
RENDER_MEMORY_BYTES = 2 << 30  # the child's address space after its imports (about 200 MiB)
RENDER_MAX_CHARS = 16 * 1024 * 1024  # one rendered record; no context window is near it
START_TIMEOUT_S = 60.0  # importing the renderer on a busy host


class _Ended(Exception):
    """The child is gone (killed, out of memory); the message says how it ended."""


class _Child:
    """One renderer process with one template compiled in it, talking one JSON line each way."""

    def __init__(self, setup: dict) -> None:
        # The child reads the template from stdin, never argv (which every local user can read).
        self.proc = subprocess.Popen([sys.executable, "-m", "airlock.models.chat_render"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_child_env())
        self.buffer = b""
        self.setup = setup

    def ask(self, request: dict, deadline: float) -> dict | None:
        """The answer, or None when `deadline` (a monotonic time) passed first; _Ended if it died."""
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise _Ended(describe_exit(self.proc.wait())) from None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _Ended(describe_exit(self.proc.wait()))
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


# Children that finished a submission in time wait here for the next one with the same template,
# so a process that checks many submissions (the gateway) pays a renderer's start-up once.
_IDLE: list[_Child] = []
_IDLE_LOCK = threading.Lock()
MAX_IDLE = 2


def _take_idle(setup: dict) -> _Child | None:
    with _IDLE_LOCK:
        for child in _IDLE:
            if child.setup == setup:
                _IDLE.remove(child)
                return child
    return None


def _give_back(child: _Child) -> None:
    with _IDLE_LOCK:
        _IDLE.append(child)
        spare = _IDLE[:-MAX_IDLE]
        del _IDLE[:-MAX_IDLE]
    for old in spare:
        old.kill()


class TemplateRenderer:
    """`render(messages)` through `template` in a child process; InvalidInput (naming the model and
    the limit) when the template is too large, or its records take longer than `timeout_s` in all,
    or it outgrows its memory. Close it when done."""

    def __init__(self, model: str, template: str, special_tokens: dict[str, str], *, timeout_s: float) -> None:
        self._child: _Child | None = None
        size = len(template.encode("utf-8"))
        if size > TEMPLATE_MAX_BYTES:
            raise InvalidInput(f"base model {model!r}: its chat template is {size} bytes, more than the "
                               f"{TEMPLATE_MAX_BYTES} bytes airlock renders; use a model with a shorter template")
        self.model, self.timeout_s = model, timeout_s
        self._setup = {"template": template, "special_tokens": special_tokens}
        self._deadline: float | None = None
        self._broken: str | None = None

    def render(self, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        if self._broken:  # a limit was hit: every later record would only hit it again
            raise InvalidInput(self._broken)
        if self._child is None:
            self._start()
        if self._deadline is None:  # the budget is for every record of the submission together
            self._deadline = time.monotonic() + self.timeout_s
        answer = self._ask({"messages": messages, "add_generation_prompt": add_generation_prompt}, self._deadline,
                           f"render the records within {self.timeout_s:g} s (the limit is "
                           "AIRLOCK_CHAT_TEMPLATE_TIMEOUT_S)")
        if "error" in answer:
            raise ValueError(answer["error"])  # the template's own refusal of this record
        return answer["text"]

    def close(self) -> None:
        """Hand a healthy child on to the next submission with this template; a failed one is gone."""
        child, self._child = self._child, None
        if child is not None:
            _give_back(child)

    def __del__(self) -> None:
        if self._child is not None:
            self._child.kill()

    def _start(self) -> None:
        self._child = _take_idle(self._setup)
        if self._child is None:
            self._child = _Child(self._setup)
            answer = self._ask(self._setup, time.monotonic() + START_TIMEOUT_S,
                               f"compile within {START_TIMEOUT_S:g} s (the renderer's start-up limit)")
            if "error" in answer:
                self._fail(f"base model {self.model!r}: its chat template does not compile: {answer['error']}")

    def _ask(self, request: dict, deadline: float, failing: str) -> dict:
        try:
            answer = self._child.ask(request, deadline)
        except _Ended as ended:
            self._fail(f"base model {self.model!r}: the chat template's renderer {ended} (its memory limit is "
                       f"{RENDER_MEMORY_BYTES >> 20} MiB); nothing was run")
        if answer is None:
            self._fail(f"base model {self.model!r}: its chat template did not {failing}; nothing was run")
        return answer

    def _fail(self, message: str) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.kill()
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
