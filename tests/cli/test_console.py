"""The CLI's consoles print values as they are: a fingerprint's ":AB:" is no emoji code."""

from __future__ import annotations

from airlock.cli import common

FINGERPRINT = "DB:10:85:16:A3:4D:F8:C5:A6:04:92:AB:CC:9E:CD:41"


def test_a_fingerprint_is_printed_unchanged(capsys) -> None:
    common.console.print(f"sha256: {FINGERPRINT} :smile:", highlight=False, soft_wrap=True)
    common.err_console.print(f"sha256: {FINGERPRINT}", highlight=False, soft_wrap=True)
    out, err = capsys.readouterr()
    assert out == f"sha256: {FINGERPRINT} :smile:\n"
    assert err == f"sha256: {FINGERPRINT}\n"
