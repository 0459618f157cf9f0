"""Waiting for something a real process does, with a deadline and a message that says what."""

from __future__ import annotations

import time


def wait_for(check, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(every)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
