"""Where a gateway process spends its CPU: py-spy samples sorted into the layers of a request.

Optional: py-spy (`pip install py-spy`) is not one of airlock's dependencies. When it is present,
the capacity benchmark records the gateway while wrk drives the chat route and adds a table of
these shares to BENCHMARKS.md. Only samples of a thread holding the GIL are taken (`--gil`), so
waiting in the event loop is not counted as work.

A sample belongs to the first frame, from the innermost outwards, that lies in a known package;
standard-library frames (json, asyncio, contextlib) are charged to the code that called them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

LAYERS = {
    "aiohttp": "aiohttp client: the request to the engine and reading its answer",
    "yarl": "aiohttp client: the request to the engine and reading its answer",
    "multidict": "aiohttp client: the request to the engine and reading its answer",
    "fastapi": "FastAPI and Starlette: middleware, routing, dependency injection, request and response objects",
    "starlette": "FastAPI and Starlette: middleware, routing, dependency injection, request and response objects",
    "uvicorn": "uvicorn: HTTP parsing and writing, the ASGI cycle",
    "airlock": "airlock's own code: key check, role, limits, body checks, model resolution, usage, recorder, metrics",
}
OFF_LOOP = "database work off the event loop (recorder writes, registry reloads)"
LOOP = "uvloop: the event loop and socket I/O (C code under asyncio.Runner)"
OTHER = "other"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(pid: int, seconds: int, out: Path) -> subprocess.Popen:
    """Start sampling `pid` for `seconds` into `out` (py-spy's raw, collapsed-stack format)."""
    return subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                             "--gil", "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def frames(stack: str) -> list[tuple[str, str]]:
    """(function, file) per frame, outermost first."""
    out = []
    for frame in stack.split(";"):
        match = _FRAME.match(frame.strip())
        out.append((match["func"], match["file"]) if match else (frame.strip(), ""))
    return out


def layer(stack: list[tuple[str, str]]) -> str:
    if any(func in ("Recorder._run", "read_snapshot") for func, _ in stack):
        return OFF_LOOP
    if stack and stack[-1][0] == "Runner.run":
        return LOOP
    for _, file in reversed(stack):
        top = re.split(r"[/\\]", file.split("site-packages/")[-1])[0]
        if top in LAYERS:
            return LAYERS[top]
    return OTHER


def breakdown(raw: str) -> tuple[list[tuple[str, float]], list[tuple[str, float]], int]:
    """(share per layer, share of the ten busiest functions by own time, samples) from py-spy raw output."""
    layers, functions, total = Counter(), Counter(), 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parsed, n = frames(stack), int(count)
        total += n
        layers[layer(parsed)] += n
        func, file = parsed[-1]
        functions[f"{func} ({file.split('site-packages/')[-1]})"] += n
    if not total:
        return [], [], 0
    return ([(k, v / total) for k, v in layers.most_common()],
            [(k, v / total) for k, v in functions.most_common(10)], total)
