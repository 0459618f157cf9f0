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
from airlock.gateway.pool import HEALTH_EVERY_S, EnginePool
from airlock.private import make_private_dir
from airlock.serve.fleet import fleet

BODY = json.dumps({"model": "airlock-tiny", "messages": [{"role": "user", "content": "hi"}]}).encode()


def start_stub(folder: Path, models: list[str] | None = None) -> subprocess.Popen:
    """A stand-in engine on a replica's socket; with `models`, it holds those models only."""
    make_private_dir(folder)
    (folder / "secret").write_text(secrets.token_hex(16))
    socket = folder / "vllm.sock"
    socket.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "bench.stub_engine", "--uds", str(socket), "--secret-file",
                             str(folder / "secret"), *(["--models", ",".join(models)] if models else [])],
                            cwd=REPO_ROOT)
    deadline = time.monotonic() + 20
    while not socket.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the stand-in engine did not start"
        time.sleep(0.05)
    return proc


def test_replicas_share_the_load_and_a_killed_one_leaves_and_returns(tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("pool"))  # short: the sockets' paths must fit
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
        # At once, before the loop has seen the kernel close its pooled connections: the first
        # request is written on one of them, fails with EPIPE (nothing delivered) and goes on.
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


def test_an_alias_goes_to_the_replica_holding_its_adapter_and_a_restart_rejoins_only_with_it(tmp_path_factory):
    """Replica 0 lacks the alias's adapter (as after a restart, before the reconciler restored
    it): the alias's requests still all succeed on replica 1, and a restarted replica 0 stays out
    of the rotation until it holds the adapter."""
    import httpx
    from gateway_support import gateway_settings, run_gateway

    from airlock.meta import open_meta
    from airlock.meta.db import now

    engines = json.dumps([{"model": "airlock-tiny", "replicas": 2}])
    settings = gateway_settings(tmp_path_factory.mktemp("pool"), engines=engines)
    settings.ensure_dirs()
    replicas = fleet(settings)
    procs = [start_stub(replicas[0].folder, ["airlock-tiny"]),
             start_stub(replicas[1].folder, ["airlock-tiny", "adapter-a"])]
    with open_meta(settings.db_path).write() as db:
        db["aliases"].insert({"name": "prod", "model_id": "adapter-a", "lora_name": "adapter-a",
                              "base_model": "airlock-tiny", "updated_at": now(), "staged_for": None,
                              "audience": None, "promotion_id": None, "revoked_note": None})
    gateway = run_gateway(settings)
    gw = next(gateway)
    try:
        pool = gw.app.state.engines

        def ask(model: str) -> int:
            return httpx.post(f"{gw.url}/v1/chat/completions", headers={"Authorization": f"Bearer {gw.key}"},
                              json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                              timeout=10).status_code

        # One at a time, every request first reaches replica 0 (fewest outstanding, ties: the first).
        assert [ask("prod") for _ in range(4)] == [200] * 4
        assert [ask("airlock-tiny") for _ in range(2)] == [200] * 2

        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait()
        assert ask("airlock-tiny") == 200  # its connect fails: out of the rotation, served by replica 1
        assert not pool.members[0].in_rotation
        procs[0] = start_stub(replicas[0].folder, ["airlock-tiny"])  # restarted, adapter not restored yet
        time.sleep(3 * HEALTH_EVERY_S + 0.5)
        assert not pool.members[0].in_rotation, "a replica without the alias's adapter rejoined"

        procs[0].kill()
        procs[0].wait()
        procs[0] = start_stub(replicas[0].folder, ["airlock-tiny", "adapter-a"])  # the reconciler's work done
        deadline = time.monotonic() + 10
        while not pool.members[0].in_rotation:
            assert time.monotonic() < deadline, "the replica holding every adapter did not rejoin"
            time.sleep(0.1)
        assert [ask("prod") for _ in range(2)] == [200] * 2
    finally:
        gateway.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
