"""Reading wrk's results and the stand-in engine's request parsing: pure helpers, no processes."""

from __future__ import annotations

import json

import pytest

from bench.stub_engine import Answers, parse_request
from bench.wrk import lua_script, lua_string, parse_output, undo_correction


def wrk_correct(histogram: dict[int, int], expected: int) -> dict[int, int]:
    """What wrk's stats_correct() does to its latency histogram after a run (src/stats.c)."""
    data = dict(histogram)
    for n in range(expected * 2, max(histogram) + 1):
        count, m = histogram.get(n, 0), n - expected
        while count and m > expected:
            data[m] = data.get(m, 0) + count
            m -= expected
    return data


def test_undo_correction_recovers_what_wrk_recorded():
    recorded = {40: 3, 41: 5, 45: 1, 90: 2, 130: 1, 400: 1}
    corrected = wrk_correct(recorded, 44)
    assert sum(corrected.values()) > sum(recorded.values())  # wrk added samples
    assert undo_correction(corrected, 44) == recorded


def test_undo_correction_refuses_a_histogram_wrk_never_made():
    with pytest.raises(ValueError):
        undo_correction({50: 1, 150: 3}, 50)  # 150 would have added one at 100


def test_parse_output_pools_totals_and_uncorrected_latencies():
    recorded = {900: 2, 1000: 5, 5000: 1}
    requests, connections, duration = sum(recorded.values()), 2, 8000
    corrected = wrk_correct(recorded, duration // (requests // connections))
    out = "\n".join([
        "Running 1s test @ http://127.0.0.1:1/v1/chat/completions",
        f"wrk-result requests={requests} duration_us={duration} connect=0 read=0 write=0 status=1 timeout=0",
        "wrk-latency " + " ".join(f"{v}:{c}" for v, c in sorted(corrected.items())),
    ])
    result = parse_output(out, connections)
    assert result.histogram == recorded
    assert result.requests == 8 and result.seconds == pytest.approx(0.008)
    assert result.failed == 1 and result.errors["status"] == 1
    assert result.latencies_ms() == [0.9, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0]


def test_parse_output_without_a_result_line_says_so():
    with pytest.raises(RuntimeError, match="no result line"):
        parse_output("unable to connect to 127.0.0.1:1 Connection refused", 1)


def test_lua_strings_escape_quotes_backslashes_and_non_ascii():
    assert lua_string('say "hi"\\n') == '"say \\"hi\\"\\\\n"'
    assert lua_string("ü\n") == '"\\195\\188\\010"'


def test_lua_script_sets_method_body_headers_and_prints_results():
    script = lua_script("POST", {"Authorization": "Bearer ak-1-x"}, json.dumps({"model": "m"}), histogram=True)
    assert 'wrk.method = "POST"' in script
    assert 'wrk.body = "{\\"model\\": \\"m\\"}"' in script
    assert 'wrk.headers["Authorization"] = "Bearer ak-1-x"' in script
    assert "HISTOGRAM = true" in script and "function done(summary, latency, requests)" in script
    assert "wrk.body" not in lua_script("GET", {}, histogram=False)


def test_stub_engine_waits_for_a_whole_request_and_checks_the_secret():
    body = b'{"model": "airlock-tiny"}'
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: engine\r\nAuthorization: Bearer s3cret\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
    assert parse_request(request[:-3]) is None
    head, total = parse_request(request + b"GET /health HTTP/1.1\r\n\r\n")
    assert total == len(request)
    answers = Answers("s3cret")
    assert answers.to(head).startswith(b"HTTP/1.1 200 OK")
    assert b'"total_tokens": 20' in answers.to(head)
    assert Answers("other").to(head).startswith(b"HTTP/1.1 401")
    assert answers.to(b"GET /health HTTP/1.1").startswith(b"HTTP/1.1 200 OK")

    # With a model list it answers as an engine holding only those: 404 for any other model.
    holding = Answers("s3cret", ["airlock-tiny", "adapter-a"])
    assert holding.to(head, body).startswith(b"HTTP/1.1 200 OK")
    assert holding.to(head, b'{"model": "adapter-b"}').startswith(b"HTTP/1.1 404")
    listing = holding.to(b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer s3cret")
    assert b'"id": "adapter-a", "object": "model", "parent": "airlock-tiny"' in listing


def test_profile_charges_library_frames_to_their_layer_and_stdlib_to_its_caller():
    from bench.profile import LAYERS, LOOP, OFF_LOOP, breakdown

    root = "_run_code (<frozen runpy>:88);serve_gateway (airlock/gateway/app.py:157);Runner.run (asyncio/runners.py:118)"
    raw = "\n".join([
        f"{root};forward (airlock/gateway/proxy.py:121);loads (json/__init__.py:346) 3",
        f"{root};forward (airlock/gateway/proxy.py:140);ClientSession._request (aiohttp/client.py:737) 4",
        f"{root};Router.app (starlette/routing.py:700) 2",
        f"{root} 1",
        "_bootstrap (threading.py:995);Recorder._run (airlock/gateway/recorder.py:60);execute (sqlite_utils/db.py:1) 2",
    ])
    layers, functions, samples = breakdown(raw)
    shares = dict(layers)
    assert samples == 12
    assert shares[LAYERS["airlock"]] == pytest.approx(3 / 12)
    assert shares[LAYERS["aiohttp"]] == pytest.approx(4 / 12)
    assert shares[LAYERS["starlette"]] == pytest.approx(2 / 12)
    assert shares[LOOP] == pytest.approx(1 / 12) and shares[OFF_LOOP] == pytest.approx(2 / 12)
    assert functions[0] == ("ClientSession._request (aiohttp/client.py)", pytest.approx(4 / 12))


def test_vllm_running_gauge_is_read_from_its_metrics():
    from bench.gateway_bench import running_requests

    text = "\n".join([
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        'vllm:num_requests_running{engine="0",model_name="airlock-tiny"} 3.0',
        'vllm:num_requests_waiting{engine="0",model_name="airlock-tiny"} 9.0',
    ])
    assert running_requests(text) == 3.0
    assert running_requests("# nothing here") is None


def test_lua_script_can_pause_between_requests():
    assert "function delay() return 45 end" in lua_script("GET", {}, histogram=True, pause_ms=45)
    assert "function delay()" not in lua_script("GET", {}, histogram=True)
