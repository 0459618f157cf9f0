"""No network at runtime: `airlock demo` (appliance + quickstart workflow + gateway) inside a
network namespace that has nothing but loopback, then a real openai client call through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from e2e_support import AIRLOCK, QA, REPO_ROOT, can_isolate

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

SCRIPT = r"""
set -euo pipefail
ip link set lo up
# The namespace must hold loopback only: no route anywhere else.
if ip -o link show | grep -v ': lo:' | grep -q .; then echo "not isolated"; ip -o link show; exit 90; fi
"$AIRLOCK" demo --model airlock-tiny > "$LOG" 2>&1 &
demo=$!
for _ in $(seq 900); do
  grep -q "shown once" "$LOG" && break
  kill -0 $demo 2>/dev/null || { echo "demo exited"; cat "$LOG"; exit 91; }
  sleep 1
done
key=$(grep -o 'ak-[A-Za-z0-9_-]*' "$LOG" | head -n 1)
"$PYTHON" - "$key" <<'PY'
import json, os, sys
from openai import OpenAI
client = OpenAI(base_url=os.environ["GATEWAY"] + "/v1", api_key=sys.argv[1], max_retries=0)
messages = json.loads(os.environ["QUESTION"])
reply = client.chat.completions.create(model="quickstart-assistant", messages=messages, temperature=0, max_tokens=40)
print("ANSWER:" + reply.choices[0].message.content)
PY
"$AIRLOCK" down
wait $demo || true
# `airlock down` stopped everything: the gateway does not answer, the engine's socket is gone.
"$PYTHON" -c "import socket, sys; sys.exit(0 if socket.socket().connect_ex(('127.0.0.1', 8080)) else 92)"
test ! -e "$AIRLOCK_HOME/run/engine/vllm.sock" || exit 93
echo "STOPPED CLEANLY"
"""


def test_demo_runs_and_serves_with_no_network(tmp_path, tiny_models_dir):
    if reason := can_isolate():
        pytest.skip(reason)
    env = dict(os.environ, AIRLOCK=AIRLOCK, PYTHON=sys.executable, LOG=str(tmp_path / "demo.log"),
               AIRLOCK_HOME=str(tmp_path / "home"), AIRLOCK_MODELS_DIR=str(tiny_models_dir),
               AIRLOCK_GATEWAY_PORT="8080", GATEWAY="http://127.0.0.1:8080",
               QUESTION=json.dumps(QA[0][:-1]))
    done = subprocess.run(["unshare", "-n", "bash", "-c", SCRIPT], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=1200)
    log = (tmp_path / "demo.log").read_text() if (tmp_path / "demo.log").exists() else ""
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{log[-3000:]}"
    assert f"ANSWER:{QA[0][-1]['content']}" in done.stdout
    assert "STOPPED CLEANLY" in done.stdout
    assert "quickstart-assistant" in log and "curl" in log and "from openai import OpenAI" in log
