"""Bounded requests against a real gateway: oversized headers and bodies, costly completions and
server-changing fields are refused before anything reaches the model server, at once, with the
cap and the AIRLOCK_ setting named, and the gateway keeps answering everyone else meanwhile.

The model server is down here: a request that passed every check comes back 503, one that did
not comes back 400 or 413.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time

import httpx
import openai
import pytest
from vllm_fixtures import free_port

from airlock.config import Settings
from airlock.gateway.errors import BadRequest
from airlock.gateway.limits import BEHAVIOUR_FIELDS, check_completion_request

MB = 1024 * 1024
CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def post(gw, path: str, *, json_body=None, content=None, headers=None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {gw.key}", **(headers or {})}
    return httpx.post(f"{gw.url}{path}", json=json_body, content=content, headers=headers, timeout=30)


def chat(gw, **fields) -> httpx.Response:
    return post(gw, CHAT, json_body={"model": gw.settings.serve_base_model, "messages": HI, **fields})


def refused(resp: httpx.Response, status: int, param: str | None, *fragments: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["type"] == "invalid_request_error"
    for fragment in fragments:
        assert fragment in err["message"]
    return err


def raw_request(gw, head: bytes) -> socket.socket:
    sock = socket.create_connection((gw.settings.gateway_host, gw.settings.gateway_port), timeout=5)
    sock.sendall(head)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 62


def head_for(gw, path: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {gw.key}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


# Bodies -------------------------------------------------------------------------------------------


def test_a_20_mb_body_is_413_in_well_under_a_second(offline_gateway):
    started = time.perf_counter()
    resp = post(offline_gateway, CHAT, content=b"x" * (20 * MB))
    assert time.perf_counter() - started < 1.0
    refused(resp, 413, None, f"{20 * MB} bytes", "AIRLOCK_MAX_BODY_BYTES")
    assert resp.json()["error"]["code"] == "request_too_large"


def test_a_chunked_20_mb_body_is_413_in_well_under_a_second(offline_gateway):
    def chunks():
        for _ in range(20):
            yield b"x" * MB

    started = time.perf_counter()
    resp = post(offline_gateway, CHAT, content=chunks())
    assert time.perf_counter() - started < 1.0
    refused(resp, 413, None, "over 4194304 bytes", "AIRLOCK_MAX_BODY_BYTES")


def test_an_oversized_content_length_is_answered_before_a_byte_of_the_body(offline_gateway):
    sock = raw_request(offline_gateway, head_for(offline_gateway, CHAT, f"Content-Length: {20 * MB}\r\n"))
    with sock:
        status, body = read_response(sock)  # nothing of the body was ever sent
    assert status == 413 and "AIRLOCK_MAX_BODY_BYTES" in body["error"]["message"]


def test_a_chunked_body_is_answered_as_soon_as_it_crosses_the_cap(offline_gateway):
    sock = raw_request(offline_gateway, head_for(offline_gateway, CHAT, "Transfer-Encoding: chunked\r\n"))
    with sock:
        chunk = b"%x\r\n" % MB + b"x" * MB + b"\r\n"
        for _ in range(5):  # 5 MiB of a body that never ends: one over the 4 MiB cap
            sock.sendall(chunk)
        status, body = read_response(sock)
    assert status == 413 and "over 4194304 bytes" in body["error"]["message"]


def test_uploads_have_their_own_larger_cap(offline_gateway):
    """5 MiB is over the body cap but under the upload cap: the upload route sees it."""
    data = b'{"text": "' + b"x" * (5 * MB) + b'"}\n'
    resp = post(offline_gateway, "/api/datasets?name=big", content=data,
                headers={"Content-Type": "application/x-ndjson"})
    assert resp.status_code != 413, resp.text
    refused(post(offline_gateway, CHAT, content=data), 413, None, "AIRLOCK_MAX_BODY_BYTES")


# Headers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", CHAT])
def test_a_1_mb_header_is_400_naming_the_header_limit_in_under_a_second(offline_gateway, path):
    started = time.perf_counter()
    resp = httpx.post(f"{offline_gateway.url}{path}", json={}, timeout=30,
                      headers={"Authorization": f"Bearer {offline_gateway.key}", "X-Padding": "a" * MB})
    assert time.perf_counter() - started < 1.0
    refused(resp, 400, None, "AIRLOCK_MAX_HEADER_BYTES", "x-padding", f"{MB} bytes", "at most 16384")


# Completion bounds --------------------------------------------------------------------------------


def test_the_openai_client_surfaces_a_refused_n_cleanly(offline_gateway):
    client = openai.OpenAI(base_url=f"{offline_gateway.url}/v1", api_key=offline_gateway.key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=offline_gateway.settings.serve_base_model, messages=HI, n=10000)
    assert info.value.status_code == 400
    assert info.value.body["param"] == "n"
    assert "n is 10000; at most 8 is accepted (AIRLOCK_MAX_N)" in info.value.message


@pytest.mark.parametrize("fields, param, fragment", [
    ({"max_tokens": 1_000_000_000}, "max_tokens", "AIRLOCK_MAX_COMPLETION_TOKENS"),
    ({"max_completion_tokens": 4097}, "max_completion_tokens", "at most 4096"),
    ({"max_tokens": -1}, "max_tokens", "at least 1"),
    ({"max_completion_tokens": 0}, "max_completion_tokens", "at least 1"),
    ({"max_tokens": 1e9}, "max_tokens", "must be an integer"),
    ({"n": 0}, "n", "at least 1"),
    ({"messages": [{"role": "user", "content": "a" * 200_001}]}, "messages", "AIRLOCK_MAX_PROMPT_CHARS"),
    ({"guided_json": {"enum": ["x" * 100] * 200}}, "guided_json", "AIRLOCK_MAX_GUIDED_BYTES"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(1000)}}}}]},
     "tools", "AIRLOCK_MAX_GUIDED_BYTES"),
    ({"chat_template": "{{ messages }}"}, "chat_template", "AIRLOCK_ALLOW_REQUEST_FIELDS"),
])
def test_costly_or_server_changing_completions_are_400_naming_the_field(offline_gateway, fields, param,
                                                                         fragment):
    refused(chat(offline_gateway, **fields), 400, param, fragment)


def test_a_long_completions_prompt_is_400(offline_gateway):
    resp = post(offline_gateway, "/v1/completions",
                json_body={"model": offline_gateway.settings.serve_base_model, "prompt": ["a" * 150_000] * 2})
    refused(resp, 400, "prompt", "prompt holds 300000 characters", "AIRLOCK_MAX_PROMPT_CHARS")


def test_requests_within_the_bounds_go_on_to_the_model_server(offline_gateway):
    # n x max_tokens exactly at AIRLOCK_MAX_COMPLETION_TOKENS (4096); one more token is refused.
    resp = chat(offline_gateway, n=8, max_tokens=512, top_k=5, response_format={"type": "json_object"})
    assert resp.status_code == 503, resp.text  # past every check; the model server is down
    refused(chat(offline_gateway, n=8, max_tokens=513), 400, "max_tokens", "8 x 513 = 4104",
            "AIRLOCK_MAX_COMPLETION_TOKENS")


def test_a_field_the_operator_allows_goes_through(tmp_path, start_gateway):
    settings = Settings(home=tmp_path / "home", gateway_port=free_port(), vllm_port=free_port(),
                        allow_request_fields="chat_template, priority")
    with start_gateway(settings) as gw:
        assert chat(gw, chat_template="{{ messages }}", priority=1).status_code == 503
        refused(chat(gw, chat_template="{{ messages }}", cache_salt="s"), 400, "cache_salt")


# The gateway stays responsive ---------------------------------------------------------------------


def test_healthz_keeps_answering_while_abusive_requests_are_in_flight(offline_gateway):
    latencies = probe_while_abused(offline_gateway, "/healthz", 200)
    assert max(latencies) < 1.0 and statistics.median(latencies) < 0.25, latencies


@pytest.mark.vllm
@pytest.mark.slow
def test_readyz_stays_200_while_abusive_requests_are_in_flight(live_gateway):
    latencies = probe_while_abused(live_gateway, "/readyz", 200)
    assert max(latencies) < 1.0, latencies


def probe_while_abused(gw, path: str, status: int) -> list[float]:
    """Probe `path` 30 times while every kind of abusive request is sent from other threads;
    each probe must answer `status`; returns the probes' latencies."""
    stop = threading.Event()
    abuse_done = []

    def abuse(send) -> None:
        while not stop.is_set():
            try:
                send()
            except httpx.HTTPError:
                pass
            abuse_done.append(1)

    def endless_chunked() -> None:
        with raw_request(gw, head_for(gw, CHAT, "Transfer-Encoding: chunked\r\n")) as sock:
            sock.sendall(b"%x\r\n" % MB + b"x" * MB + b"\r\n")
            stop.wait(0.2)  # holds a half-sent body open

    abusers = [
        lambda: post(gw, CHAT, content=b"x" * (20 * MB)),
        lambda: post(gw, CHAT, content=(b"x" * MB for _ in range(20))),
        lambda: httpx.get(f"{gw.url}/healthz", headers={"X-Padding": "a" * MB}, timeout=30),
        lambda: chat(gw, n=10000),
        lambda: chat(gw, messages=[{"role": "user", "content": "a" * 300_000}]),
        endless_chunked,
    ]
    threads = [threading.Thread(target=abuse, args=(send,), daemon=True) for send in abusers]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)  # every kind of abuse is under way
        latencies = []
        with httpx.Client(timeout=5) as probe:
            for _ in range(30):
                started = time.perf_counter()
                resp = probe.get(f"{gw.url}{path}")
                latencies.append(time.perf_counter() - started)
                assert resp.status_code == status, resp.text
                if path == "/healthz":
                    assert resp.json() == {"status": "ok"}
                time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert len(abuse_done) >= len(abusers)
    return latencies


# check_completion_request on its own --------------------------------------------------------------


@pytest.fixture
def limits() -> Settings:
    return Settings(max_prompt_chars=10, max_guided_bytes=64)


def param_of(body: dict, limits: Settings, path: str = CHAT) -> str | None:
    try:
        check_completion_request(body, path, limits)
    except BadRequest as exc:
        return exc.param
    return None


@pytest.mark.parametrize("content, over", [
    ("a" * 10, False),
    ("a" * 11, True),
    ([{"type": "text", "text": "a" * 6}, {"type": "text", "text": "a" * 5}], True),
    (None, False),
    ({"not": "a list"}, False),  # vLLM answers malformed content itself
])
def test_message_content_is_counted_as_text(limits, content, over):
    body = {"messages": [{"role": "system", "content": None}, {"role": "user", "content": content}]}
    assert param_of(body, limits) == ("messages" if over else None)


@pytest.mark.parametrize("kind", ["image_url", "input_audio", "video_url", "file"])
def test_media_content_parts_are_refused_unless_allowed(limits, kind):
    parts = [{"type": "text", "text": "a" * 6}, {"type": kind, kind: {"url": "http://10.0.0.1/x"}}]
    body = {"messages": [{"role": "user", "content": parts}]}
    with pytest.raises(BadRequest, match=f"content part type '{kind}' is not accepted.*media_content"):
        check_completion_request(body, CHAT, limits)
    allowed = limits.model_copy(update={"allow_request_fields": "media_content"})
    assert param_of(body, allowed) is None  # and only the text is counted against the prompt bound


@pytest.mark.parametrize("prompt, over", [
    ("a" * 11, True),
    (["a" * 5, "a" * 5], False),
    (list(range(11)), True),  # token ids count one each
    ([[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11]], True),
    ([[1, 2, 3], [4, 5]], False),
    (42, False),
])
def test_every_prompt_form_is_counted(limits, prompt, over):
    assert param_of({"prompt": prompt}, limits, "/v1/completions") == ("prompt" if over else None)


@pytest.mark.parametrize("body, param", [
    ({"n": True}, "n"),
    ({"n": "2"}, "n"),
    ({"best_of": 9}, "best_of"),
    ({"max_tokens": None, "n": None, "chat_template": None}, None),  # null is the same as absent
    ({"top_k": 5, "min_p": 0.1, "ignore_eos": True, "min_tokens": 2, "use_beam_search": True}, None),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"enum": ["x" * 64]}}}},
     "response_format"),
    ({"structured_outputs": {"regex": "a" * 100}}, "structured_outputs"),
    ({"structured_outputs": {"choice": ["yes", "no"]}}, None),
    ({"request_id": "r", "bad_words": ["x"]}, "bad_words"),  # the first in order, all in the message
])
def test_edge_cases(limits, body, param):
    assert param_of({"messages": HI, **body}, limits) == param


@pytest.mark.parametrize("body, path, param", [
    ({"prompt": "hi", "logprobs": -1}, "/v1/completions", "logprobs"),  # vLLM: the whole vocabulary
    ({"prompt": "hi", "logprobs": 21}, "/v1/completions", "logprobs"),
    ({"prompt": "hi", "logprobs": 5}, "/v1/completions", None),
    ({"messages": HI, "logprobs": True, "top_logprobs": -1}, CHAT, "top_logprobs"),
    ({"messages": HI, "logprobs": True, "top_logprobs": 20}, CHAT, None),
])
def test_logprobs_are_bounded_before_the_engine(body, path, param):
    assert param_of(body, Settings(), path) == param


def test_every_behaviour_field_is_refused_unless_allowed():
    strict, open_ = Settings(), Settings(allow_request_fields=",".join(BEHAVIOUR_FIELDS))
    for field in BEHAVIOUR_FIELDS:
        assert param_of({"messages": HI, field: 1}, strict) == field
        assert param_of({"messages": HI, field: 1}, open_) is None


def test_checking_a_normal_request_costs_microseconds():
    settings = Settings()
    body = {"model": "m", "messages": [{"role": "system", "content": "Be brief." * 20},
                                       {"role": "user", "content": "Hello there. " * 50}],
            "max_tokens": 256, "temperature": 0.2, "stream": True, "n": 1}
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        check_completion_request(body, CHAT, settings)
    assert (time.perf_counter() - started) / rounds < 50e-6
