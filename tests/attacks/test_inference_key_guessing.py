"""Someone guessing keys: wrong secrets for a key id they know, made-up keys, a flood of sign-in
attempts. Each failure is counted per client address and per key id, refused with 429 and
Retry-After past AIRLOCK_AUTH_FAIL_LIMIT, counted in /metrics, and summarised in the audit log
at a bounded rate, which `airlock status` reports.

Guesses come over real sockets to a real gateway, from several source addresses of the
loopback network (127.0.0.2, 127.0.0.3, ...: distinct peers to the gateway)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_support import Gateway, gateway_settings, run_gateway

from airlock.access.failures import MAX_ROWS_PER_MINUTE, AuthFailures
from airlock.errors import RateLimited
from airlock.home import HomeLock

LIMIT = 5
CHAT = {"model": "airlock-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def from_address(address: str) -> httpx.Client:
    """A client whose connections leave from `address` (a loopback address of its own)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wrong_secret(key: str) -> str:
    """The same key id with a secret one character off."""
    return key[:-1] + ("A" if key[-1] != "A" else "B")


def auth_rows(gw: Gateway) -> list[dict]:
    rows = gw.meta.query("SELECT actor, subject, detail_json FROM audit WHERE action = 'auth.failed' ORDER BY id")
    return [{**r, "detail": json.loads(r["detail_json"])} for r in rows]


def wait_for_rows(gw: Gateway, count: int) -> list[dict]:
    deadline = time.monotonic() + 10
    while len(rows := auth_rows(gw)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return rows


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Gateway]:
    """An offline gateway (no engine: a request that gets past the key answers 503) with the web
    UI, allowing LIMIT failures per address and per key id a minute."""
    from airlock.web import install

    yield from run_gateway(gateway_settings(tmp_path / "home", gateway_host="127.0.0.1", auth_fail_limit=LIMIT,
                                            auth_fail_window_s=60), ui=install)


def test_guessing_from_one_address_is_429_after_the_limit_even_with_the_right_key(guarded):
    """Had it worked, one address could try secrets without end (each a 401), and the operator
    would see nothing: no counter, no audit row."""
    gw = guarded
    key = gw.new_key("inference")
    with from_address("127.0.0.2") as attacker:
        codes = [attacker.post(f"{gw.url}/v1/chat/completions", json=CHAT,
                               headers=bearer(f"ak-{i:08x}-guess{i}")).status_code for i in range(LIMIT)]
        assert codes == [401] * LIMIT
        refused = attacker.post(f"{gw.url}/v1/chat/completions", json=CHAT, headers=bearer(key))
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "127.0.0.2" in error["message"] and "AIRLOCK_AUTH_FAIL_LIMIT" in error["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Another address with the right key is served as before (503: this gateway has no engine).
    with from_address("127.0.0.3") as app:
        assert app.post(f"{gw.url}/v1/chat/completions", json=CHAT, headers=bearer(key)).status_code == 503
    metrics = httpx.get(f"{gw.url}/metrics", headers=bearer(gw.key)).text
    assert f'airlock_gateway_auth_failures_total{{door="v1"}} {LIMIT}.0' in metrics
    assert 'airlock_gateway_auth_throttled_total{door="v1"} 1.0' in metrics
    rows = wait_for_rows(gw, 1)
    assert [(r["actor"], r["subject"]) for r in rows] == [("address:127.0.0.2", "127.0.0.2")]
    # The first summary is written within a second; what came after it waits for the next minute.
    assert 1 <= rows[0]["detail"]["failures"] <= LIMIT and set(rows[0]["detail"]["doors"]) == {"v1"}


def test_guesses_at_one_key_spread_over_addresses_lock_that_key_id(guarded):
    """Had it worked, a guesser with many addresses, each under its own limit, could keep
    trying secrets for one key id."""
    gw = guarded
    target, bystander = gw.new_key("trainer"), gw.new_key("trainer")
    target_id = target.split("-")[1]
    for n in range(LIMIT):  # one guess from each of LIMIT addresses: none reaches its own limit
        with from_address(f"127.0.1.{n + 1}") as attacker:
            assert attacker.get(f"{gw.url}/api/runs", headers=bearer(wrong_secret(target))).status_code == 401
    with from_address("127.0.2.1") as fresh:
        locked = fresh.get(f"{gw.url}/api/runs", headers=bearer(target))
        assert locked.status_code == 429, locked.text
        assert f"API key {target_id}" in locked.json()["error"]["message"] and "Retry-After" in locked.headers
        assert fresh.get(f"{gw.url}/api/runs", headers=bearer(bystander)).status_code == 200
    rows = wait_for_rows(gw, LIMIT)
    assert all(r["detail"]["key_ids"] == [target_id] for r in rows)
    assert sum(r["detail"]["failures"] for r in rows) == LIMIT


def test_made_up_key_ids_are_not_followed_so_they_cannot_evict_real_ones():
    """Had unknown ids been counted, a flood of made-up ids would grow the gateway's memory
    without bound (and push the real key's count out)."""
    failures = AuthFailures(limit=3, window_s=60)
    for i in range(3):
        failures.failed("10.0.0.1", "realkey1", "v1", now=100.0 + i)
    for i in range(50_000):
        failures.failed(f"10.1.{i // 250}.{i % 250}", None, "v1", now=110.0)
    assert len(failures._keys) == 1 and len(failures._addresses) <= 10_000
    with pytest.raises(RateLimited, match="API key realkey1"):
        failures.check("10.9.9.9", "realkey1", now=120.0)
    failures.check("10.9.9.9", "realkey1", now=161.0)  # the window ended


def test_a_sign_in_flood_gets_a_429_page_and_a_bounded_trace(guarded):
    """Had it worked, the sign-in form would be an unmetered guessing oracle, and each try an
    audit row (a flood would fill the disk)."""
    gw = guarded
    with from_address("127.0.0.4") as browser:
        pages = [browser.post(f"{gw.url}/sign-in", data={"key": f"ak-deadbeef-try{i}", "next": "/"})
                 for i in range(LIMIT + 200)]
    assert [p.status_code for p in pages[:LIMIT]] == [401] * LIMIT
    assert {p.status_code for p in pages[LIMIT:]} == {429}
    page = pages[-1]
    assert page.headers["content-type"].startswith("text/html") and int(page.headers["Retry-After"]) >= 1
    assert "too many failed authentications" in page.text
    time.sleep(2.5)  # two flushes of the recorder
    rows = auth_rows(gw)
    assert len(rows) == 1 and 1 <= rows[0]["detail"]["doors"]["sign-in"] <= LIMIT
    metrics = httpx.get(f"{gw.url}/metrics", headers=bearer(gw.key)).text
    assert f'airlock_gateway_auth_failures_total{{door="sign-in"}} {LIMIT}.0' in metrics
    assert 'airlock_gateway_auth_throttled_total{door="sign-in"} 200.0' in metrics


def test_a_flood_from_many_addresses_writes_a_bounded_number_of_audit_rows():
    """Had rows been one per failure (or one per address per minute without a total bound), a
    flood from a /16 would write hundreds of thousands of rows. Ten simulated minutes of 2,000
    addresses failing every second: at most MAX_ROWS_PER_MINUTE rows a minute, and none lost
    from the count."""
    failures = AuthFailures(limit=3, window_s=60)
    rows, flood = [], 0
    for second in range(600):
        for n in range(2000):
            if (n + second) % 20 == 0:  # each address fails every 20 s: 100 failures a second
                failures.failed(f"10.2.{n // 250}.{n % 250}", None, "v1", now=float(second))
                flood += 1
        rows += [(second, r) for r in failures.summaries(now=second + 0.5)]
    per_minute = [sum(1 for s, _ in rows if s // 60 == minute) for minute in range(10)]
    assert max(per_minute) <= MAX_ROWS_PER_MINUTE and flood == 60_000
    pending = sum(p.count for p in failures._pending.values())
    assert sum(r["failures"] for _, r in rows) + pending == flood


def test_airlock_status_and_metrics_show_recent_failures(guarded):
    """Had failures left no trace, the operator's `airlock status` would say nothing of them."""
    gw = guarded
    with from_address("127.0.0.5") as attacker:
        for i in range(3):
            attacker.get(f"{gw.url}/api/runs", headers=bearer(f"ak-{i:08x}-nope"))
    wait_for_rows(gw, 1)
    lock = HomeLock(gw.settings)  # `airlock status` reports on a running appliance: hold its lock
    lock.acquire()
    try:
        env = {**os.environ, "AIRLOCK_HOME": str(gw.settings.home), "PYTHONPATH": os.pathsep.join(sys.path)}
        done = subprocess.run([sys.executable, "-m", "airlock", "status", "--json"], env=env, capture_output=True,
                              text=True, timeout=120)
        text = subprocess.run([sys.executable, "-m", "airlock", "status"], env=env, capture_output=True,
                              text=True, timeout=120)
    finally:
        lock.release()
    assert done.returncode == 0, done.stderr
    failures = json.loads(done.stdout)["auth_failures"]
    assert failures["failures"] == 3 and failures["top"] == [{"address": "127.0.0.5", "failures": 3}]
    assert "failed authentications in the last 1 h: 3 from 1 address" in " ".join(text.stdout.split())
