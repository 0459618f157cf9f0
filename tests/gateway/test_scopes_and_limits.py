"""Scoped keys, per-key rate limits that survive a restart, and a gateway that answers keys and
aliases from memory: changes apply to the very next request, a stalled database stalls nothing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import pytest

from vllm_fixtures import free_port

from airlock.config import Settings
from airlock.meta.db import now

CHAT = [{"role": "user", "content": "Say something."}]


def chat(gw, key: str, model: str, **extra) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "messages": CHAT, "max_tokens": 4, "temperature": 0, **extra},
                      timeout=60)


def set_alias(gw, alias: str, lora_name: str) -> None:
    with gw.meta.write() as db:
        db["aliases"].upsert({"name": alias, "model_id": lora_name, "lora_name": lora_name,
                              "base_model": gw.settings.serve_base_model, "updated_at": now()}, pk="name")


def models(gw, key: str) -> list[str]:
    resp = httpx.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return [m["id"] for m in resp.json()["data"]]


def test_a_key_limited_to_one_alias_sees_and_calls_only_that_one(offline_gateway):
    set_alias(offline_gateway, "alias-a", "lora-a")
    set_alias(offline_gateway, "alias-b", "lora-b")
    key = offline_gateway.new_key("inference", models=["alias-a"])
    assert models(offline_gateway, key) == ["alias-a"]
    other, missing = chat(offline_gateway, key, "alias-b"), chat(offline_gateway, key, "no-such-model")
    # Out of scope reads exactly like "does not exist": no oracle for what is served.
    assert other.status_code == missing.status_code == 404
    assert other.json()["error"]["message"].replace("alias-b", "X") == \
        missing.json()["error"]["message"].replace("no-such-model", "X")
    assert chat(offline_gateway, key, "airlock-tiny").status_code == 404  # the base is not in scope either
    # In scope, the request reaches the engine (down here, so 503), proving it was allowed.
    assert chat(offline_gateway, key, "alias-a").status_code == 503
    everything = offline_gateway.new_key("inference")
    assert set(models(offline_gateway, everything)) == {"airlock-tiny", "alias-a", "alias-b"}


def test_revocation_and_expiry_apply_to_the_very_next_request(offline_gateway):
    from airlock.access.keys import revoke_key

    key = offline_gateway.new_key("inference")
    assert models(offline_gateway, key)
    revoke_key(offline_gateway.meta, key.split("-")[1], actor="os:test")
    resp = httpx.get(f"{offline_gateway.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 401 and "revoked" in resp.json()["error"]["message"]
    soon = offline_gateway.new_key("inference", expires="1m")
    with offline_gateway.meta.write() as db:  # let a minute pass
        db.execute("UPDATE api_keys SET expires_at = '2000-01-01T00:00:00+00:00' WHERE id = ?", [soon.split("-")[1]])
    resp = httpx.get(f"{offline_gateway.url}/v1/models", headers={"Authorization": f"Bearer {soon}"})
    assert resp.status_code == 401 and "expired" in resp.json()["error"]["message"]


def test_last_use_is_recorded_off_the_request_path(offline_gateway):
    from airlock.access.keys import get_key

    key = offline_gateway.new_key("inference")
    chat(offline_gateway, key, "airlock-tiny")
    deadline = time.monotonic() + 5
    while get_key(offline_gateway.meta, key.split("-")[1])["last_used_at"] is None:
        assert time.monotonic() < deadline, "last use never recorded"
        time.sleep(0.1)


@pytest.mark.vllm
@pytest.mark.slow
def test_a_burst_over_one_keys_limit_is_429_for_that_key_only_even_after_a_restart(
        tmp_path, vllm_server, live_gateway, start_gateway):
    settings = Settings(**{**live_gateway.settings.model_dump(), "home": tmp_path / "other-home",
                           "gateway_port": free_port()})
    with start_gateway(settings) as gw:
        limited, other = gw.new_key("inference", rpm=3), gw.new_key("inference")
        codes = [chat(gw, limited, "airlock-tiny").status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        refused = chat(gw, limited, "airlock-tiny")
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert 1 <= int(refused.headers["Retry-After"]) <= 20
        assert all(chat(gw, other, "airlock-tiny").status_code == 200 for _ in range(5))
    # The gateway stopped and flushed its rate state; a new one on the same home keeps the limit.
    with start_gateway(settings) as again:
        assert chat(again, limited, "airlock-tiny").status_code == 429
        assert chat(again, other, "airlock-tiny").status_code == 200


@pytest.mark.vllm
@pytest.mark.slow
def test_a_tokens_per_minute_limit_counts_the_answers(live_gateway):
    key = live_gateway.new_key("inference", tpm=40)
    codes = [chat(live_gateway, key, "airlock-tiny", max_tokens=16).status_code for _ in range(6)]
    assert 200 in codes and codes[-1] == 429


STALL = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")  # the write lock: every other writer waits behind it
conn.execute("UPDATE api_keys SET name = name")
print("LOCKED", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


@pytest.mark.vllm
@pytest.mark.slow
def test_a_stalled_database_does_not_stall_requests(live_gateway, loaded_adapters):
    from airlock.access.keys import get_key

    key = live_gateway.new_key("inference")
    set_alias(live_gateway, "stall-alias", loaded_adapters[0])
    assert chat(live_gateway, key, "stall-alias").status_code == 200
    time.sleep(1.5)  # the first use is recorded
    # A second, real process takes the database's write lock and holds it for 6 s.
    holder = subprocess.Popen([sys.executable, "-c", STALL, str(live_gateway.settings.db_path), "6"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "LOCKED"
    locked_at = time.monotonic()
    try:
        results, errors = [], []

        def stream() -> None:
            try:
                started = time.perf_counter()
                with httpx.stream("POST", f"{live_gateway.url}/v1/chat/completions",
                                  headers={"Authorization": f"Bearer {key}"}, timeout=60,
                                  json={"model": "stall-alias", "messages": CHAT, "max_tokens": 16,
                                        "stream": True}) as resp:
                    body = resp.read().decode()
                results.append((resp.status_code, "[DONE]" in body, time.perf_counter() - started))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=stream) for _ in range(6)]
        for t in threads:
            t.start()
            time.sleep(0.3)  # spread over the stall, so the gateway's own writes queue behind it
        started = time.perf_counter()
        ready = httpx.get(f"{live_gateway.url}/readyz", timeout=10)
        ready_took = time.perf_counter() - started
        for t in threads:
            t.join(30)
        during = time.monotonic() - locked_at
        assert holder.poll() is None, "the lock holder must still hold the lock during the requests"
        before = get_key(live_gateway.meta, key.split("-")[1])["last_used_at"]
    finally:
        holder.wait(30)
    assert during < 6
    assert not errors and len(results) == 6
    assert all(code == 200 and done for code, done, _ in results), results
    assert max(took for *_, took in results) < 3, results
    assert ready.status_code == 200 and ready_took < 2
    # The gateway's own writes waited for the lock instead of the requests: once it is free,
    # the last use of the key is recorded.
    deadline = time.monotonic() + 10
    while get_key(live_gateway.meta, key.split("-")[1])["last_used_at"] == before:
        assert time.monotonic() < deadline, "the last use was never written after the stall"
        time.sleep(0.2)


def test_the_event_loop_never_touches_sqlite(offline_gateway, monkeypatch):
    """Instrumented: every metadata call records whether it ran on the gateway's event loop."""
    import asyncio

    from airlock.access.keys import revoke_key
    from airlock.meta.db import Meta

    on_loop = []

    def watch(name):
        original = getattr(Meta, name)

        def wrapper(self, *args, **kwargs):
            try:
                asyncio.get_running_loop()
                on_loop.append((name, args[:1]))
            except RuntimeError:
                pass
            return original(self, *args, **kwargs)

        monkeypatch.setattr(Meta, name, wrapper)

    for name in ("query", "one", "write", "audit"):
        watch(name)
    key = offline_gateway.new_key("inference", rpm=100)
    set_alias(offline_gateway, "watched", "lora-x")
    assert models(offline_gateway, key) == ["airlock-tiny", "watched"]
    chat(offline_gateway, key, "watched")
    httpx.get(f"{offline_gateway.url}/readyz")
    httpx.get(f"{offline_gateway.url}/api/runs", headers={"Authorization": f"Bearer {key}"})  # 403, audited
    assert chat(offline_gateway, key[:-2] + "xx", "watched").status_code == 401  # a failure, summarised
    revoke_key(offline_gateway.meta, key.split("-")[1], actor="os:test")
    assert chat(offline_gateway, key, "watched").status_code == 401
    time.sleep(1.5)  # the recorder's writes happen meanwhile, in its own thread
    assert on_loop == []
