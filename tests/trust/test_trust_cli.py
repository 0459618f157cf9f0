"""`airlock trust ...` end to end: a ceremony's root versions, checked as an appliance would check them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from airlock.cli.main import app
from airlock.trust.ed25519 import fingerprint_text
from airlock.trust.root import parse_root, update_chain, verify_root_self

runner = CliRunner()
SECRET = "a long passphrase for tests"


@pytest.fixture(autouse=True)
def no_install_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRLOCK_PREFIX", raising=False)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "passphrase"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def trust(*args: str, ok: bool = True):
    result = runner.invoke(app, ["trust", *args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def doc(path: Path) -> dict:
    return json.loads(path.read_bytes())


def test_init_show_add_revoke_rotate_then_a_client_walks_the_chain(tmp_path: Path, settings, secret_file,
                                                                    monkeypatch) -> None:
    monkeypatch.setenv("AIRLOCK_KEY_PASSPHRASE", SECRET)  # for the commands without --passphrase-file
    folder = tmp_path / "ceremony"
    root = folder / "root.json"
    keys = folder / "keys"
    out = trust("init", "--dir", str(folder), "--passphrase-file", str(secret_file)).output
    v1 = verify_root_self(doc(root), now=datetime.now(UTC), source="v1")
    for kid in v1.roles["root"].keyids:
        assert fingerprint_text(v1.keys[kid]) in out
    assert "NOT FOR PRODUCTION" not in out

    shown = trust("show", "--root", str(root)).output
    assert shown.startswith("trust root version 1") and "role root: 2 of 3 key(s) must sign" in shown

    trust("new-key", "--out", str(tmp_path / "alice.key"))
    trust("add-key", "--root", str(root), "--role", "bundle", "--key", str(tmp_path / "alice.pub"),
          "--sign-with", str(keys / "root-1.key"), "--sign-with", str(keys / "root-2.key"))
    old_bundle = v1.roles["bundle"].keyids[0]
    trust("revoke-key", "--root", str(root), "--role", "bundle", "--keyid", old_bundle,
          "--sign-with", str(keys / "root-2.key"), "--sign-with", str(keys / "root-3.key"))
    keep = v1.roles["root"].keyids[0]
    out = trust("rotate", "--root", str(root), "--threshold", "2", "--keep", keep, "--generate", "2",
                "--sign-with", str(keys / "root-1.key"), "--sign-with", str(keys / "root-3.key")).output
    assert "root.json is now version 4" in out

    # A client pinned at version 1 walks 2, 3, 4 from the files the ceremony kept.
    chain = [doc(folder / f"{v}.root.json") for v in (2, 3)] + [doc(root)]
    v4 = update_chain(parse_root(doc(folder / "1.root.json"), source="v1"), chain, now=datetime.now(UTC))
    assert v4.version == 4 and v4.roles["root"].keyids[0] == keep and len(v4.roles["root"].keyids) == 3
    assert old_bundle not in v4.keys and len(v4.roles["bundle"].keyids) == 1
    assert (keys / "root-v4-1.key").exists() and (keys / "root-v4-2.pub").exists()

    # The appliance: pin version 1 against a fingerprint read aloud, then accept the chain.
    spoken = fingerprint_text(v1.keys[keep])
    trust("pin", str(folder / "1.root.json"), "--fingerprint", spoken)
    assert (settings.home / "trust" / "root.json").exists()
    assert "trust root version 1" in trust("show").output
    out = trust("accept", str(folder / "2.root.json"), str(folder / "3.root.json"), str(root)).output
    assert "pinned root version 4" in out and trust("show").output == trust("show", "--root", str(root)).output

    # On a host installed from a bundle, the installer's PREFIX/trust is the pinned root.
    monkeypatch.setenv("AIRLOCK_PREFIX", str(tmp_path / "prefix"))
    assert "no trust root is pinned here" in trust("show", ok=False).output
    (tmp_path / "prefix" / "trust").mkdir(parents=True)
    (tmp_path / "prefix" / "trust" / "root.json").write_bytes((folder / "1.root.json").read_bytes())
    assert trust("show").output.startswith("trust root version 1")


def test_refusals_exit_with_the_error_codes_and_a_clear_message(tmp_path: Path, settings, secret_file) -> None:
    folder = tmp_path / "ceremony"
    base = ["--passphrase-file", str(secret_file)]
    result = trust("init", "--dir", str(folder), "--threshold", "1", "--root-keys", "3", *base, ok=False)
    assert result.exit_code == 2 and "threshold 1 lets one lost or stolen key" in result.output
    demo = trust("init", "--dir", str(folder), "--demo", *base)
    assert "NOT FOR PRODUCTION" in demo.output
    root, key = folder / "root.json", folder / "keys" / "root-1.key"
    result = trust("revoke-key", "--root", str(root), "--role", "root", "--keyid",
                   parse_root(doc(root), source="r").roles["root"].keyids[0], "--sign-with", str(key), *base, ok=False)
    assert result.exit_code == 2 and "would leave role root 0 key(s) for a threshold of 1" in result.output
    secret_file.chmod(0o644)
    result = trust("set-expiry", "--root", str(root), "--days", "30", "--sign-with", str(key), *base, ok=False)
    assert result.exit_code == 5 and "group or others may read this passphrase file" in result.output
    secret_file.write_text("wrong\n")
    secret_file.chmod(0o600)
    result = trust("set-expiry", "--root", str(root), "--days", "30", "--sign-with", str(key), *base, ok=False)
    assert result.exit_code == 2 and f"{key}: wrong passphrase" in result.output
    result = trust("show", ok=False)
    assert result.exit_code == 3 and "no trust root is pinned here" in result.output


def run_cli(args: list[str], stdin: str, home: Path) -> subprocess.CompletedProcess:
    # A new session has no controlling terminal, so getpass reads the typed lines from stdin.
    env = {k: v for k, v in os.environ.items() if k != "AIRLOCK_KEY_PASSPHRASE"} | {"AIRLOCK_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "airlock", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=120, start_new_session=True)


def test_a_new_key_asks_its_passphrase_twice(tmp_path: Path) -> None:
    out = tmp_path / "bob.key"
    done = run_cli(["trust", "new-key", "--out", str(out)], "first\nsecond\n", tmp_path / "home")
    assert done.returncode == 2 and "the two passphrases differ" in done.stderr and not out.exists()
    done = run_cli(["trust", "new-key", "--out", str(out)], "same\nsame\n", tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert "New passphrase for" in done.stderr and "fingerprint" in done.stdout
    assert out.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
