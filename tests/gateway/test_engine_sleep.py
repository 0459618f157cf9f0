"""While training has put the engine to sleep, the gateway answers 503 with Retry-After."""

from __future__ import annotations

import httpx


def test_the_gateway_answers_503_with_retry_after_while_the_engine_sleeps(offline_gateway):
    gw = offline_gateway
    key = gw.new_key()

    def ask() -> httpx.Response:
        return httpx.post(f"{gw.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                          json={"model": "airlock-tiny", "messages": [{"role": "user", "content": "hi"}]})

    with gw.meta.write() as db:  # what the worker records before it puts the engine to sleep
        db["engine_sleep"].insert({"run_id": "run-sleepy", "since": "2026-12-03T00:00:00", "retry_after_s": 42.4})
    asleep = ask()
    assert asleep.status_code == 503 and asleep.headers["retry-after"] == "43"
    assert "its engine sleeps while run run-sleepy trains on its GPU" in asleep.json()["error"]["message"]
    with gw.meta.write() as db:
        db.execute("DELETE FROM engine_sleep")
    awake = ask()  # on to the engine, which is not running in this test
    assert awake.status_code == 503 and "sleeps" not in awake.json()["error"]["message"]
