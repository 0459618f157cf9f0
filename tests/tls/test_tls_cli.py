"""`airlock tls check` and `airlock tls generate` as provisioning runs them: the real command,
its JSON, `changed`, and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from tls_support import openssl_pair

from airlock.tls import check_pair


def airlock(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "airlock", "tls", *args], capture_output=True, text=True,
                          timeout=60)


def test_generate_twice_changes_nothing_the_second_time(tmp_path: Path):
    cert, key = tmp_path / "pki" / "gw.crt", tmp_path / "pki" / "gw.key"
    args = ("generate", "--cert", str(cert), "--key", str(key), "--name", "gw.test", "--name", "10.0.0.5", "--json")
    first = airlock(*args)
    assert first.returncode == 0, first.stderr
    made = json.loads(first.stdout)
    assert set(made) == {"fingerprint", "changed", "names", "not_after"}
    assert made["changed"] is True and made["names"] == ["gw.test", "10.0.0.5"]
    assert made["fingerprint"] == check_pair(cert, key).fingerprint
    assert datetime.fromisoformat(made["not_after"]) == check_pair(cert, key).not_after
    again = json.loads(airlock(*args).stdout)
    assert again == {**made, "changed": False}
    human = airlock(*args[:-1])
    assert human.returncode == 0 and human.stdout.rstrip().endswith("changed: false")
    assert made["fingerprint"] in human.stdout


def test_generate_replaces_a_pair_that_does_not_cover_the_names(tmp_path: Path):
    p = openssl_pair(tmp_path, "DNS:old.test")
    out = airlock("generate", "--cert", str(p.cert), "--key", str(p.key), "--name", "new.test")
    assert out.returncode == 0, out.stderr
    assert "does not cover new.test" in out.stdout and "changed: true" in out.stdout
    assert check_pair(p.cert, p.key, "new.test").names == ["new.test"]


def test_check_prints_subject_names_validity_and_fingerprint(tmp_path: Path):
    p = openssl_pair(tmp_path, "DNS:openssl.test,IP:127.0.0.1")
    info = check_pair(p.cert, p.key)
    out = airlock("check", "--cert", str(p.cert), "--key", str(p.key), "--name", "127.0.0.1")
    assert out.returncode == 0, out.stderr
    for text in ("CN=openssl.test", "openssl.test, 127.0.0.1", info.fingerprint, "self-signed: yes", "days left"):
        assert text in out.stdout
    as_json = json.loads(airlock("check", "--cert", str(p.cert), "--key", str(p.key), "--json").stdout)
    assert as_json == info.to_dict()


def test_check_refusals_exit_2_naming_the_file(tmp_path: Path):
    p = openssl_pair(tmp_path, "DNS:openssl.test")
    out = airlock("check", "--cert", str(p.cert), "--key", str(p.key), "--name", "other.test")
    assert out.returncode == 2 and "it covers openssl.test" in out.stderr and str(p.cert) in out.stderr
    p.key.chmod(0o644)
    out = airlock("check", "--cert", str(p.cert), "--key", str(p.key))
    assert out.returncode == 2 and "mode 0644" in out.stderr and str(p.key) in out.stderr
    out = airlock("generate", "--cert", str(p.cert), "--key", str(p.key), "--name", "bad name", "--json")
    assert out.returncode == 2 and "'bad name'" in out.stderr and out.stdout == ""
