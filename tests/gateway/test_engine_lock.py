"""The locked engine: only a process holding the per-start secret reaches vLLM, and only the
appliance's user can reach its socket at all. Every attempt below is made for real against the
session's vLLM server (a Unix socket in a 0700 folder, a secret in the environment)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ATTEMPTS = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/load_lora_adapter", {"lora_name": "intruder", "lora_path": "/tmp"}),
    ("POST", "/v1/unload_lora_adapter", {"lora_name": "gw-adapter-a"}),
    ("POST", "/v1/chat/completions", {"model": "airlock-tiny", "max_tokens": 4,
                                      "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/completions", {"model": "airlock-tiny", "prompt": "hi", "max_tokens": 4}),
]


def over_socket(settings, method: str, path: str, body, secret: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(settings.engine_socket)), base_url="http://engine") as c:
        return c.request(method, path, json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("secret", [None, "guessed-secret", "ak-00000000-an-airlock-key"])
def test_without_the_secret_every_call_is_refused(vllm_server, loaded_adapters, secret):
    for method, path, body in ATTEMPTS:
        resp = over_socket(vllm_server.settings, method, path, body, secret)
        assert resp.status_code == 401, (method, path, resp.status_code, resp.text[:200])
    # Nothing changed: the adapters airlock loaded are still there, no intruder among them.
    loaded = vllm_server.loaded_adapters()
    assert set(loaded_adapters) <= set(loaded) and "intruder" not in loaded


def test_with_the_secret_the_same_calls_work(vllm_server):
    secret = vllm_server.settings.engine_secret_path.read_text().strip()
    resp = over_socket(vllm_server.settings, "GET", "/v1/models", None, secret)
    # On a CPU engine the base model's name is a zero adapter beside the weights' own name
    # (docs/security.md, "Adapters of one CPU engine never answer for each other").
    assert resp.status_code == 200 and "airlock-tiny" in [m["id"] for m in resp.json()["data"]]


def test_the_engine_folder_and_secret_are_owner_only_and_the_secret_is_not_in_argv(vllm_server):
    settings = vllm_server.settings
    assert settings.engine_dir.stat().st_mode & 0o777 == 0o700
    assert settings.engine_secret_path.stat().st_mode & 0o777 == 0o600
    secret = settings.engine_secret_path.read_text().strip()
    cmdline = Path(f"/proc/{vllm_server.proc.pid}/cmdline").read_bytes().decode()
    assert secret not in cmdline and "--api-key" not in cmdline


def _listening_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def test_the_engine_api_listens_on_no_tcp_port(vllm_server):
    # The API server (the process that answers HTTP) holds no listening TCP socket. vLLM's engine
    # workers talk among themselves over loopback ports that carry no HTTP API (see
    # docs/security.md); provisioned hosts put the engine in its own network namespace.
    assert not (_listening_inodes() & _socket_inodes(vllm_server.proc.pid))


def test_another_unix_user_cannot_reach_the_socket_or_read_the_secret(vllm_server):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as another Unix user")
    settings = vllm_server.settings
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({str(settings.engine_socket)!r}); print('CONNECTED')\n"
        "except PermissionError: print('SOCKET DENIED')\n"
        "try:\n"
        f"    open({str(settings.engine_secret_path)!r}).read(); print('READ SECRET')\n"
        "except PermissionError: print('SECRET DENIED')\n"
    )
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", probe],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["SOCKET", "DENIED", "SECRET", "DENIED"], done.stdout + done.stderr
