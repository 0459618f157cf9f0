"""The two faults of the proxy under load, each caused for real:

- a pooled connection the engine has closed: retried once on a fresh connection, and never a
  request the engine had read (no double generation); bursts after idle periods of 0-10 s
  through the real engine get no 503;
- a client that hangs up on a non-streaming request: its generation stops in the engine.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from vllm_fixtures import free_port

from airlock.config import Settings
from airlock.serve.vllm_server import prepare_engine_dir

COMPLETION = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "airlock-tiny",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}).encode()
CHAT = {"model": "airlock-tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


class FlakyEngine:
    """An engine on the engine's Unix socket that misbehaves on purpose, counting what it read.

    mode "closes-reused": answers the first request on every connection, and closes a
    connection the moment a second request arrives on it, without answering: exactly what a
    client sees when the engine closed an idle pooled connection under it.
    mode "dies-mid-answer": reads a request, sends half an answer and closes.
    """

    def __init__(self, socket_path, mode: str) -> None:
        self.socket_path, self.mode = socket_path, mode
        self.requests_read = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> FlakyEngine:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path))

    async def _stop(self) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if served and self.mode == "closes-reused":
                    break  # a request on a kept-alive connection: close without reading it
                found = re.search(rb"content-length:\s*(\d+)", head, re.I)
                length = int(found.group(1)) if found else 0  # a GET (the gateway's scrape of /metrics)
                await reader.readexactly(length)
                self.requests_read += 1
                served += 1
                if self.mode == "dies-mid-answer":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: 400\r\n\r\n" + COMPLETION[:20])
                    await writer.drain()
                    break
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(COMPLETION)).encode() + b"\r\n\r\n" + COMPLETION)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
def flaky_home(tmp_path):
    settings = Settings(home=tmp_path / "home", gateway_port=free_port())
    prepare_engine_dir(settings)
    return settings


def _chat(gw, client: httpx.Client | None = None) -> httpx.Response:
    return (client or httpx).post(f"{gw.url}/v1/chat/completions", json=CHAT,
                                  headers={"Authorization": f"Bearer {gw.key}"}, timeout=30)


def test_a_pooled_connection_the_engine_closed_is_retried_on_a_fresh_one(flaky_home, start_gateway):
    with FlakyEngine(flaky_home.engine_socket, "closes-reused") as engine, start_gateway(flaky_home) as gw:
        answers = [_chat(gw) for _ in range(6)]
        assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
        assert all(r.json()["choices"][0]["message"]["content"] == "hi" for r in answers)
        # Each request was read by the engine exactly once: the closed connections held none.
        assert engine.requests_read == 6
        # The gateway scrapes this engine too (it answers a completion, not figures): a slow
        # machine may take longer than httpx's 5 s default.
        metrics = httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {gw.key}"}, timeout=30).text
        assert 'kind="stale_connection_retried"' in metrics


def test_a_request_the_engine_read_is_never_sent_again(flaky_home, start_gateway):
    with FlakyEngine(flaky_home.engine_socket, "dies-mid-answer") as engine, start_gateway(flaky_home) as gw:
        resp = _chat(gw)
        assert resp.status_code == 502, resp.text
        assert resp.json()["error"]["code"] == "upstream_error"
        assert "broke off" in resp.json()["error"]["message"]
        assert engine.requests_read == 1


# --- against the real engine --------------------------------------------------------------------

def _burst(gw, size: int) -> list[int]:
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(size) as pool:
        return list(pool.map(lambda _: _chat_base(gw, client).status_code, range(size)))


def _chat_base(gw, client: httpx.Client) -> httpx.Response:
    body = CHAT | {"model": gw.settings.serve_base_model}
    return client.post(f"{gw.url}/v1/chat/completions", json=body,
                       headers={"Authorization": f"Bearer {gw.key}"})


@pytest.mark.vllm
@pytest.mark.slow
def test_bursts_after_idle_periods_get_no_503(live_gateway, vllm_server):
    """Idle periods on both sides of the gateway's pool idle time and of the engine's keep-alive
    (vLLM's default was 5 s, under the 60 s the pool once kept connections for)."""
    gw = live_gateway
    statuses = {}
    for idle in (0.0, 1.0, 2.9, 3.2, 4.9, 5.1, 7.0, 10.0):
        time.sleep(idle)
        statuses[idle] = _burst(gw, 12)
    failed = {idle: s for idle, s in statuses.items() if set(s) != {200}}
    assert not failed, failed


def _engine_busy(vllm_server) -> float:
    """Requests running or waiting in the engine, from its own metrics."""
    text = vllm_server.client.request("GET", "/metrics").text
    total = 0.0
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        total += sum(float(m) for m in re.findall(rf"^{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M))
    return total


@pytest.mark.vllm
@pytest.mark.slow
def test_cancelled_non_streaming_requests_stop_generating_in_the_engine(live_gateway, vllm_server):
    gw = live_gateway
    long = CHAT | {"model": gw.settings.serve_base_model, "max_tokens": 400, "ignore_eos": True}

    def cancelled(_: int) -> str:
        try:
            resp = httpx.post(f"{gw.url}/v1/chat/completions", json=long,
                              headers={"Authorization": f"Bearer {gw.key}"}, timeout=0.5)
        except httpx.TimeoutException:
            return "cancelled"
        # too fast to cancel (the check below would prove nothing), or refused: which one, said
        return "finished" if resp.status_code == 200 else f"status {resp.status_code}: {resp.text[:200]}"

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(cancelled, range(16)))
    assert not [o for o in outcomes if o.startswith("status")], outcomes
    # Most must still be generating when their clients hang up; on a loaded 2-core host a few
    # of the 16 can finish their 400 tokens within the half second.
    assert outcomes.count("cancelled") >= 9, outcomes
    deadline = time.monotonic() + 2.0
    while (busy := _engine_busy(vllm_server)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert busy == 0, f"{busy:.0f} requests still in the engine 2 s after their clients hung up"
    # And a new request is served at once, not after the abandoned ones.
    started = time.monotonic()
    assert _chat_base(gw, httpx.Client(timeout=30)).status_code == 200
    assert time.monotonic() - started < 5

