"""The proof of the offline bundle: a CPU bundle built from this checkout is installed, in a network
namespace holding only loopback, into a fresh prefix; the installed appliance runs the quickstart
workflow and answers the official openai client. strace records every connect() of every process
on the way, and none may aim anywhere but loopback or a Unix socket: not just failed, never tried.
The install also loads the bundle's service images into podman (test_service_images.py runs them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_builder import build_models_bundle
from e2e_support import QA, can_isolate


pytestmark = [pytest.mark.slow, pytest.mark.vllm]

SCRIPT = r"""
set -euo pipefail
ip link set lo up
if ip -o link show | grep -v ': lo:' | grep -q .; then echo "not isolated"; exit 90; fi
"$BUNDLE/install.sh" --offline "$BUNDLE" --prefix "$PREFIX" --fingerprint "$FINGERPRINT"
set -a; . "$PREFIX/current/airlock.env"; set +a
airlock="$PREFIX/current/venv/bin/airlock"
# No AIRLOCK_MODELS_DIR, and this folder is not the release's: it finds its own models, and those of
# the models bundle installed now into PREFIX/models.
said=$("$airlock" models install "$MODELS_BUNDLE")
case "$said" in *"installed site-tiny"*) echo "MODELS INSTALLED" ;; *) echo "$said" ;; esac
"$PREFIX/current/venv/bin/python" -c 'from airlock.config import Settings
from airlock.models.catalog import base_model_names
print("MODELS", *sorted(base_model_names(Settings())))'
# The release's own Ansible finds the playbooks' collections in the release, with no network.
(cd "$PREFIX/current/bundle/playbooks" && "$PREFIX/current/venv/bin/ansible-doc" -l containers.podman) \
  | grep '^containers.podman.podman_container ' >/dev/null && echo "COLLECTIONS"
"$airlock" demo --workflow "$PREFIX/current/bundle/examples/quickstart.yaml" > "$LOG" 2>&1 &
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
client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key=sys.argv[1], max_retries=0)
reply = client.chat.completions.create(model="quickstart-assistant", messages=json.loads(os.environ["QUESTION"]),
                                       temperature=0, max_tokens=40)
print("ANSWER:" + reply.choices[0].message.content)
PY
# The installed release serves the web UI and every asset of it (the chart library included) itself.
"$PYTHON" - <<'PY'
import httpx
page = httpx.get("http://127.0.0.1:8080/sign-in")
chart = httpx.get("http://127.0.0.1:8080/static/vendor/uplot/uPlot.iife.js")
style = httpx.get("http://127.0.0.1:8080/static/app.css")
if page.status_code == 200 and "Sign in" in page.text and chart.status_code == 200 and "uPlot" in chart.text[:400] \
        and style.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]:
    print("WEBUI")
else:
    print("WEBUI MISSING", page.status_code, chart.status_code, style.status_code)
PY
"$airlock" down
wait $demo || true
echo "DONE"
"""

# connect() to loopback or a Unix socket is the appliance talking to itself.
LOCAL = re.compile(r"sa_family=AF_UNIX|sin_addr=inet_addr\(\"127\.|inet_pton\(AF_INET6, \"::1\"|"
                   r"sin6_addr=inet_pton\(AF_INET6, \"::1\"\)|sa_family=AF_UNSPEC")


def outbound(strace_log: str) -> list[str]:
    return [line for line in strace_log.splitlines() if "connect(" in line and not LOCAL.search(line)]


def test_outbound_filter_knows_local_from_remote() -> None:
    log = "\n".join([
        '12 connect(5, {sa_family=AF_UNIX, sun_path="/run/x.sock"}, 110) = 0',
        '12 connect(6, {sa_family=AF_INET, sin_port=htons(8080), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        '13 connect(7, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("151.101.0.223")}, 16) = -1 '
        'ENETUNREACH (Network is unreachable)',
    ])
    assert outbound(log) == [log.splitlines()[2]]


def test_the_manifest_signs_the_playbooks_collections_and_only_those_vendored(cpu_bundle) -> None:
    bundle, _ = cpu_bundle
    files = json.loads((bundle / "manifest.json").read_bytes())["files"]
    vendored = [path for path in files if path.startswith("playbooks/collections/")]
    assert "playbooks/collections/ansible_collections/containers/podman/MANIFEST.json" in vendored
    assert all(path.startswith("playbooks/collections/ansible_collections/containers/podman/") for path in vendored)
    assert "playbooks/ansible.cfg" in files


def test_a_bundle_installs_and_serves_with_no_network_and_no_outbound_attempt(cpu_bundle, tmp_path: Path) -> None:
    if reason := can_isolate():
        pytest.skip(reason)
    if not shutil.which("strace"):
        pytest.fail("strace is missing: ./install.sh installs it (apt-get install strace)")
    bundle, fingerprint = cpu_bundle
    build_models_bundle(bundle.parent / "ceremony", tmp_path / "models-bundle")
    trace = tmp_path / "connect.trace"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRLOCK_", "PIP_", "VIRTUAL_ENV"))}
    env.update(BUNDLE=str(bundle), PREFIX=str(tmp_path / "opt"), FINGERPRINT=fingerprint, PYTHON=sys.executable,
               LOG=str(tmp_path / "demo.log"), AIRLOCK_HOME=str(tmp_path / "home"),
               QUESTION=json.dumps(QA[0][:-1]), MODELS_BUNDLE=str(tmp_path / "models-bundle"))
    # --seccomp-bpf: strace stops the traced processes at connect() only, not at every system call
    # (under full ptrace, pip's install of the bundle's wheels alone took six minutes here).
    try:
        done = subprocess.run(["unshare", "-n", "strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=connect", "-o",
                               str(trace), "bash", "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=1800)
        release = os.readlink(tmp_path / "opt" / "current") if (tmp_path / "opt" / "current").exists() else ""
    finally:
        shutil.rmtree(tmp_path / "opt", ignore_errors=True)  # a release and its venv: the suite's disk is finite
    log = (tmp_path / "demo.log").read_text() if (tmp_path / "demo.log").exists() else ""
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{log[-3000:]}"
    assert f"ANSWER:{QA[0][-1]['content']}" in done.stdout
    assert "DONE" in done.stdout and "COLLECTIONS" in done.stdout
    assert "MODELS INSTALLED" in done.stdout and "MODELS airlock-tiny site-tiny" in done.stdout
    assert "WEBUI\n" in done.stdout, done.stdout[-2000:]
    # podman loaded the service images from their verified archives, with no network either
    tags = [image["tag"] for image in json.loads((bundle / "manifest.json").read_bytes())["contents"]["images"]]
    assert len(tags) == 3 and f"loaded into podman: {', '.join(tags)}" in done.stdout
    for tag in tags:
        assert subprocess.run(["podman", "image", "exists", tag], check=False).returncode == 0, tag
    assert release.startswith("releases/0.1.0-"), release
    connects = trace.read_text()
    assert "connect(" in connects  # the trace really saw the appliance's own connections
    assert outbound(connects) == [], "connect() attempts beyond loopback:\n" + "\n".join(outbound(connects)[:20])
