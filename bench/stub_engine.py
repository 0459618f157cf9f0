"""An instant stand-in for the engine, for the gateway capacity benchmark only.

It answers every POST with one canned chat completion and `GET /health` with 200, on the engine's
Unix socket (or a TCP port), and checks the engine secret as vLLM does. It is a raw asyncio
protocol on uvloop with precomputed answers, so it spends a small fraction of the gateway's CPU
per request (the benchmark measures both and reports the two): what the gateway benchmark then
measures is the gateway, not its upstream.

With `--models BASE,ADAPTER,...` (the gateway's replica tests) it also lists those models on
`GET /v1/models` and answers a POST for any other model with vLLM's 404, as an engine that does not
hold an adapter does.

Run as its own process: `python -m bench.stub_engine --uds PATH --secret-file PATH [--models ...]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
from pathlib import Path

_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_AUTH = re.compile(rb"\r\nauthorization:\s*([^\r]*)", re.IGNORECASE)

COMPLETION = {
    "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "airlock-tiny",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello, operator."},
                 "finish_reason": "length"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
}


def response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
            .encode() + body)


def parse_request(buffer: bytes | bytearray) -> tuple[bytes, int] | None:
    """(the request head, the whole request's length in bytes), or None until it is complete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end])
    match = _LENGTH.search(head)
    total = end + 4 + (int(match.group(1)) if match else 0)
    return (head, total) if len(buffer) >= total else None


class Answers:
    def __init__(self, secret: str, models: list[str] | None = None) -> None:
        self.bearer = f"Bearer {secret}".encode()
        self.ok = response("200 OK", json.dumps(COMPLETION).encode())
        self.health = response("200 OK", b"", "text/plain")
        self.refused = response("401 Unauthorized", b'{"error": "Unauthorized"}')
        self.models = models
        cards = [{"id": name, "object": "model", "parent": None if i == 0 else models[0]}
                 for i, name in enumerate(models or [])]
        self.listing = response("200 OK", json.dumps({"object": "list", "data": cards}).encode())
        self.missing = response("404 Not Found", b'{"error": {"message": "The model does not exist.", "code": 404}}')

    def to(self, head: bytes, body: bytes = b"") -> bytes:
        if head.startswith(b"GET /health "):
            return self.health
        auth = _AUTH.search(head)
        if not (auth and auth.group(1).strip() == self.bearer):
            return self.refused
        if self.models is None:
            return self.ok
        if head.startswith(b"GET /v1/models "):
            return self.listing
        return self.ok if json.loads(body or b"{}").get("model") in self.models else self.missing


class StubProtocol(asyncio.Protocol):
    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (request := parse_request(self.buffer)) is not None:
            head, total = request
            body = bytes(self.buffer[len(head) + 4:total])
            del self.buffer[:total]
            self.transport.write(self.answers.to(head, body))


async def serve(uds: Path | None, port: int | None, secret: str, models: list[str] | None = None) -> None:
    loop = asyncio.get_running_loop()
    answers = Answers(secret, models)
    if uds is not None:
        uds.unlink(missing_ok=True)
        server = await loop.create_unix_server(lambda: StubProtocol(answers), path=str(uds), backlog=1024)
        os.chmod(uds, 0o600)
    else:
        server = await loop.create_server(lambda: StubProtocol(answers), "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--uds", type=Path, help="listen on this Unix socket (the engine socket)")
    where.add_argument("--port", type=int, help="listen on 127.0.0.1:PORT")
    parser.add_argument("--secret-file", type=Path, required=True, help="the engine secret to require")
    parser.add_argument("--models", help="BASE,ADAPTER,...: list these on /v1/models and answer 404 for others")
    args = parser.parse_args()
    secret = args.secret_file.read_text().strip()
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(args.uds, args.port, secret, args.models.split(",") if args.models else None))


if __name__ == "__main__":
    main()
