"""A trainer's uploads cannot take the gateway's memory or all of its upload capacity.

The attacker holds a trainer key, so `POST /api/datasets` is theirs to call. If the attack
succeeded, a reviewer would see the gateway's memory grow with the upload (it grew to about 7x a
66 MB upload before uploads were validated line by line), a single line of a hundred megabytes
read whole, or one key holding every upload slot so that nobody else could upload.
"""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from collections.abc import Iterator

import httpx
import pytest
from gateway_support import gateway_settings, run_gateway

MB = 1 << 20
RECORD = (json.dumps({"messages": [{"role": "user", "content": "What port does the gateway use?"},
                                   {"role": "assistant", "content": "It listens on port 8080."}]})
          + "\n").encode()


@pytest.fixture
def gateway(tmp_path):
    yield from run_gateway(gateway_settings(tmp_path / "home", max_uploads=2, max_uploads_per_key=1,
                                            max_record_bytes=64 * 1024))


def upload(gw, key: str, body, name: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/api/datasets", params={"name": name}, content=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"})


def records(total_bytes: int) -> Iterator[bytes]:
    """`total_bytes` of valid records, in chunks of about a megabyte, each record different."""
    sent, n = 0, 0
    while sent < total_bytes:
        chunk = b"".join(RECORD.replace(b"8080", str(n + i).encode()) for i in range(8000))
        n += 8000
        sent += len(chunk)
        yield chunk


def test_memory_stays_bounded_whatever_the_upload_size(gateway):
    """A 48 MiB upload (about 400,000 records) is validated and stored while the gateway's Python
    memory peaks far below the upload's size: validation holds a line at a time, never the file."""
    key = gateway.new_key("trainer")
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        resp = upload(gateway, key, records(48 * MB), "large")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status_code == 201, resp.text
    assert resp.json()["records"] > 300_000
    # The client's own chunks (about 1 MiB each) are traced too: the bound covers both sides.
    assert peak < 16 * MB, f"peak {peak / MB:.1f} MiB of Python memory for a 48 MiB upload"


def test_a_line_longer_than_any_record_is_refused_by_line_without_being_held(gateway):
    key = gateway.new_key("trainer")
    body = RECORD + b'{"messages": "' + b"x" * (8 * MB) + b'"}\n' + RECORD
    tracemalloc.start()
    try:
        resp = upload(gateway, key, body, "one-long-line")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status_code == 400, resp.text
    problems = resp.json()["error"]["message"]
    assert "one-long-line:2: a record of more than 65536 bytes" in problems
    assert peak < 8 * MB + 4 * MB  # the test's own body is 8 MiB; the gateway added little
    listed = httpx.get(f"{gateway.url}/api/datasets", headers={"Authorization": f"Bearer {key}"}).json()
    assert [d["name"] for d in listed] == []


class SlowBody:
    """An upload whose body arrives until `release` is set: it holds its slot meanwhile."""

    def __init__(self) -> None:
        self.release, self.started = threading.Event(), threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        self.started.set()
        yield RECORD
        while not self.release.wait(0.05):
            yield b"\n"  # blank lines: valid, and they keep the request open
        yield RECORD


def in_background(gw, key: str, body, name: str) -> tuple[threading.Thread, list]:
    answer: list = []
    thread = threading.Thread(target=lambda: answer.append(upload(gw, key, body, name)), daemon=True)
    thread.start()
    return thread, answer


def test_uploads_at_once_are_limited_per_key_and_in_all(gateway):
    first, second, third = (gateway.new_key("trainer") for _ in range(3))
    slow = SlowBody()
    held, held_answer = in_background(gateway, first, slow, "slow")
    assert slow.started.wait(10)
    time.sleep(0.3)  # the request is in the route, holding its slot

    again = upload(gateway, first, RECORD, "same-key")
    assert again.status_code == 429, again.text
    assert again.headers["Retry-After"] == "5"
    assert "AIRLOCK_MAX_UPLOADS_PER_KEY=1" in again.json()["error"]["message"]

    other = SlowBody()
    held2, held2_answer = in_background(gateway, second, other, "slow-2")
    assert other.started.wait(10)
    time.sleep(0.3)
    full = upload(gateway, third, RECORD, "third")
    assert full.status_code == 429, full.text
    assert "AIRLOCK_MAX_UPLOADS=2" in full.json()["error"]["message"]

    slow.release.set()
    other.release.set()
    held.join(30)
    held2.join(30)
    assert held_answer[0].status_code == 201 and held2_answer[0].status_code == 201
    # The slots are given back, refused or not: both keys upload again at once.
    assert upload(gateway, first, RECORD.replace(b"8080", b"1"), "after").status_code == 201
    assert upload(gateway, third, RECORD.replace(b"8080", b"2"), "third").status_code == 201
