"""A sealed backup taken from a running appliance that serves the quickstart, restored into a new
home with the passphrase from a file, is the same appliance: started there, it serves the same
alias with the same adapter and the same answer, the API key made before the backup still works,
and its audit log, anchors included, verifies."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest
from e2e_support import AIRLOCK, QA, QUICKSTART, running_appliance
from openai import OpenAI

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
ALIAS = "quickstart-assistant"


def test_a_restored_backup_serves_the_same_alias(appliance, tmp_path, tiny_models_dir) -> None:
    appliance.cli("workflow", "run", str(QUICKSTART), "--wait")
    key = appliance.new_key("kept-across-restore")
    adapter = served_adapter(appliance.gateway_url, key)
    before = httpx.get(f"{appliance.gateway_url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
    passphrase = tmp_path / "backup.pass"
    passphrase.write_text("a passphrase kept apart from the backup\n")
    passphrase.chmod(0o600)
    sealed = tmp_path / "appliance.airlock-backup"
    appliance.cli("backup", "--passphrase-file", str(passphrase), str(sealed))  # online: the appliance keeps running
    home = tmp_path / "restored-home"
    env = dict(appliance.env, AIRLOCK_HOME=str(home))
    done = subprocess.run([AIRLOCK, "restore", "--passphrase-file", str(passphrase), str(sealed)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    with running_appliance(home, tiny_models_dir) as restored:
        client = OpenAI(base_url=f"{restored.gateway_url}/v1", api_key=key, max_retries=0)
        for _ in range(60):  # the reconciler verifies and loads the alias's adapter after the engine starts
            try:
                reply = client.chat.completions.create(model=ALIAS, messages=QA[0][:-1], temperature=0,
                                                       max_tokens=40)
                break
            except Exception:  # noqa: BLE001 - 503 until the adapter is loaded
                time.sleep(1)
        else:
            raise AssertionError("the restored appliance never served the alias")
        assert reply.choices[0].message.content.strip() == QA[0][-1]["content"]
        after = httpx.get(f"{restored.gateway_url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
        assert sorted(m["id"] for m in after["data"]) == sorted(m["id"] for m in before["data"])
        assert served_adapter(restored.gateway_url, key) == adapter
        assert restored.cli("audit", "verify").returncode == 0


def served_adapter(gateway_url: str, key: str) -> str:
    """The adapter that answered the alias, as the gateway names it."""
    resp = httpx.post(f"{gateway_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": ALIAS, "messages": QA[0][:-1], "max_tokens": 4}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-airlock-adapter"]
