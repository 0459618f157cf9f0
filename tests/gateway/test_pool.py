"""The gateway's replicas against real stand-in engine processes: least outstanding, a replica
killed with SIGKILL leaves the rotation at once with no request lost, and returns on restart."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from airlock.config import REPO_ROOT, Settings
from airlock.gateway.metrics import Metrics
from airlock.gateway.pool import EnginePool
from airlock.private import make_private_dir
from airlock.serve.fleet import fleet

BODY = json.dumps({"model": "airlock-tiny", "messages": [{"role": "user", "content": "hi"}]}).encode()


def start_stub(folder: Path) -> subprocess.Popen:
    make_private_dir(folder)
    (folder / "secret").write_text(secrets.token_hex(16))
    socket = folder / "vllm.sock"
    socket.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "bench.stub_engine", "--uds", str(socket), "--secret-file",
                             str(folder / "secret")], cwd=REPO_ROOT)
    deadline = time.monotonic() + 20
    while not socket.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the stand-in engine did not start"
        time.sleep(0.05)
    return proc


def test_replicas_share_the_load_and_a_killed_one_leaves_and_returns(tmp_path):
    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    replicas = fleet(settings, json.dumps([{"model": "airlock-tiny", "replicas": 2}]))
    procs = [start_stub(r.folder) for r in replicas]
    try:
        asyncio.run(_exercise(settings, replicas, procs))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


async def _exercise(settings, replicas, procs) -> None:
    pool = EnginePool(settings, Metrics(), replicas)
    pool.open()
    try:
        # Eight requests in flight at once: the fewest-outstanding rule splits them four and four.
        held = [await pool.post("airlock-tiny", "/v1/chat/completions", BODY) for _ in range(8)]
        assert sorted(m.outstanding for m in pool.members) == [4, 4]
        for member, resp in held:
            assert resp.status == 200
            resp.release()
            pool.done(member)
        assert [m.outstanding for m in pool.members] == [0, 0]

        # SIGKILL the first replica: no request fails, the first try of the next leaves it out.
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait()
        served = []
        for _ in range(6):
            member, resp = await pool.post("airlock-tiny", "/v1/chat/completions", BODY)
            assert resp.status == 200
            served.append(member.name)
            resp.release()
            pool.done(member)
        assert served == ["airlock-tiny-1"] * 6
        assert not pool.members[0].in_rotation

        # Restarted (with a new secret): back within a few health checks, and taking requests.
        procs[0] = start_stub(replicas[0].folder)
        deadline = time.monotonic() + 10
        while not pool.members[0].in_rotation:
            assert time.monotonic() < deadline, "the restarted replica did not return to the rotation"
            await asyncio.sleep(0.1)
        first, resp = await pool.post("airlock-tiny", "/v1/chat/completions", BODY)
        second, resp2 = await pool.post("airlock-tiny", "/v1/chat/completions", BODY)
        assert {first.name, second.name} == {"airlock-tiny-0", "airlock-tiny-1"}
        assert resp.status == resp2.status == 200
        for member, r in ((first, resp), (second, resp2)):
            r.release()
            pool.done(member)
    finally:
        await pool.close()
