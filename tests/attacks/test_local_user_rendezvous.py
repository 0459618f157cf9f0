"""Another local user against the rendezvous of a running two-process training run.

torchrun's rendezvous was a TCP store on localhost that any local user could reach, and the
elastic agent unpickles what it reads there: a local process that wrote the key the agent reads
ran code as the appliance's user. The run's processes now meet at a store file in the job's 0700
folder and bind their collectives to loopback. While a real two-process run (gloo, the tiny model)
trains, a second process as user `nobody` tries to open and write that store, to plant a file in
the job's folder, and to use every TCP port the run listens on as a store; each try must fail,
and the run must still train to its end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest
from listening import listening
from waiting import wait_for

from airlock.config import REPO_ROOT
from airlock.train.config import LoraTrainConfig
from airlock.train.launch import RENDEZVOUS_FILE
from airlock.workflow.training import child_env, launch_command, prepare

NOBODY = 65534
RECORDS = [json.loads(line)["messages"]
           for line in (REPO_ROOT / "examples" / "datasets" / "quickstart.jsonl").read_text().splitlines()]
# Run as `nobody`: prints one line per try, "refused ..." or "REACHED ...".
PROBE = r'''
import json, os, sys
from datetime import timedelta
args = json.loads(sys.argv[1])
def attempt(name, action):
    try:
        action()
        print("REACHED", name, flush=True)
    except Exception as exc:
        print("refused", name, type(exc).__name__, str(exc)[:120].replace("\n", " "), flush=True)
def write_store():
    with open(args["store"], "r+b") as f:
        f.write(b"\x00")
def plant():
    open(os.path.join(args["folder"], "planted"), "w").close()
def torch_file_store():
    import torch.distributed as dist
    dist.FileStore(args["store"], 2).set("airlock-probe", "x")
def tcp_store(port):
    import torch.distributed as dist
    dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=3)).set("airlock-probe", "x")
attempt("control: a file beside the job", lambda: open(args["control"]).read())
attempt("list the job folder", lambda: os.listdir(args["folder"]))
attempt("read the store", lambda: open(args["store"], "rb").read())
attempt("write the store", write_store)
attempt("plant a file in the job folder", plant)
attempt("open the store with torch", torch_file_store)
def answered(port):
    # A listener that is no store may take the connection and never answer: give up after 10 s.
    import threading
    done = []
    thread = threading.Thread(target=lambda: done.append(tcp_store(port)), daemon=True)
    thread.start()
    thread.join(10)
    if not done:
        raise TimeoutError("no store answered within 10 s")
attempt("control: a store on loopback as torchrun --standalone kept it", lambda: answered(args["control_port"]))
for port in args["ports"]:
    attempt(f"tcp store on port {port}", lambda: answered(port))
sys.stdout.flush()
os._exit(0)  # a try still waiting in its thread must not hold the exit
'''


def nobody_python() -> list[str] | None:
    """A Python the user nobody can run, with torch on its path (the venv's interpreter may live in a
    folder only root opens; a system Python of the same version reads the same packages)."""
    env = {"PYTHONPATH": sysconfig.get_paths()["purelib"], "PATH": "/usr/bin:/bin"}
    for python in (sys.executable, shutil.which("python3", path="/usr/bin:/bin")):
        try:
            done = subprocess.run([python, "-c", "import torch.distributed"], user=NOBODY, group=NOBODY,
                                  extra_groups=[], env=env, capture_output=True, timeout=120)
        except (OSError, TypeError):
            continue
        if done.returncode == 0:
            return [python]
    return None


def run_pids(launcher: int) -> list[int]:
    """The launcher and the job processes it started."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    return [launcher, *map(int, children)]


def steps(folder: Path) -> int:
    path = folder / "events.jsonl"
    return sum(1 for line in path.read_text().splitlines() if '"step"' in line) if path.exists() else 0


@pytest.mark.skipif(os.geteuid() != 0, reason="running a process as another user needs root (CI is root)")
def test_another_local_user_cannot_reach_the_rendezvous_of_a_running_two_process_run(tiny_models_dir):
    """Had it worked, `nobody` would have read or written the run's store (and so could have
    steered or joined the run), or planted a file in its folder: a line 'REACHED' below."""
    python = nobody_python()
    if python is None:
        pytest.skip("no Python that the user nobody may run has torch on its path")
    outside = Path(tempfile.mkdtemp(prefix="airlock-rdzv-"))
    try:
        outside.chmod(0o755)  # nobody may walk up to the job's folder: only the folder's own mode stops it
        (outside / "control.txt").write_text("readable by anyone")
        (outside / "control.txt").chmod(0o644)
        folder = outside / "job"
        # Far more steps than the test waits for: it stops the run itself once the probe is done.
        config = LoraTrainConfig(epochs=1000, rank=4, batch_size=1, seed=3, nproc_per_node=2,
                                 checkpoint_every=0).model_dump()
        prepare(folder, tiny_models_dir / "airlock-tiny", config, RECORDS)
        store = folder / RENDEZVOUS_FILE
        launcher = subprocess.Popen(launch_command(folder, config), env=child_env(1, []),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: steps(folder) >= 1 or launcher.poll() is not None, 240, "the run's first step")
            assert launcher.poll() is None, launcher.communicate()[0][-3000:]
            assert store.exists()
            ports = {port: address for address, port, _ in listening(set(run_pids(launcher.pid)))}
            # What the run used to rendezvous through: a TCP store on loopback, which the probe does reach.
            import torch.distributed as dist

            standalone = dist.TCPStore("127.0.0.1", 0, 1, True, wait_for_workers=False)
            args = {"folder": str(folder), "store": str(store), "control": str(outside / "control.txt"),
                    "control_port": standalone.port, "ports": sorted(ports)}
            probe = subprocess.run([*python, "-c", PROBE, json.dumps(args)], user=NOBODY, group=NOBODY,
                                   extra_groups=[], capture_output=True, text=True, timeout=180,
                                   env={"PYTHONPATH": sysconfig.get_paths()["purelib"], "PATH": "/usr/bin:/bin"})
            at_probe, running = steps(folder), launcher.poll() is None
            wait_for(lambda: steps(folder) > at_probe, 120, "a step after the probe")
            (folder / "stop").write_text("cancel")
            output = launcher.communicate(timeout=300)[0]
        finally:
            launcher.kill()
        lines = probe.stdout.splitlines()
        print("\n".join(lines))
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert running, "the run ended before the probe did"
        assert lines[0].startswith("REACHED control"), lines  # the probe does reach what is not private
        reached = [line for line in lines[1:] if not line.startswith("refused")]
        assert reached[:1] == ["REACHED control: a store on loopback as torchrun --standalone kept it"], lines
        assert reached[1:] == [], "\n".join(lines)
        assert len(lines) == 7 + len(ports)
        # The collectives' ports (gloo's pairs) face loopback only, and none of them is a store.
        assert all(ipaddress_is_loopback(address) for address in ports.values()), ports
        assert not (folder / "planted").exists()
        assert launcher.returncode == 0, output[-3000:]
        events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
        assert events[-1]["kind"] == "stopped" and steps(folder) > at_probe  # it trained on past the probe
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def ipaddress_is_loopback(address: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(address).is_loopback
