"""Another local user against the rendezvous of a running two-process training run.

torchrun's rendezvous was a TCP store on localhost that any local user could reach, and the
elastic agent unpickles what it reads there: a local process that wrote the key the agent reads
ran code as the appliance's user. The run's processes now meet at a store file in the job's 0700
folder and bind their collectives to loopback. While the first process of two waits at its
rendezvous, and again while a real two-process run (gloo, the tiny model) trains, a second process
as user `nobody` tries to open and write that store, to plant a file in the job's folder, and to
use every TCP port the run listens on as a store; each try must fail, and the run trains on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from listening import listening
from waiting import wait_for

from airlock.config import REPO_ROOT
from airlock.train.config import LoraTrainConfig
from airlock.train.launch import RENDEZVOUS_FILE, process_env, read_placement
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


@pytest.fixture
def nobody() -> list[str]:
    # Under CI (root, Debian's python3.11 installed) the attack must run: there these fail, not skip.
    give_up = pytest.fail if os.environ.get("CI") else pytest.skip
    if os.geteuid() != 0:
        give_up("running a process as another user needs root (CI is root)")
    python = nobody_python()
    if python is None:
        give_up("no Python that the user nobody may run has torch on its path")
    return python


@pytest.fixture
def outside() -> Iterator[Path]:
    """A folder anyone may walk into, with a file anyone may read: only the job folder's own mode
    keeps the probe out of it."""
    folder = Path(tempfile.mkdtemp(prefix="airlock-rdzv-"))
    folder.chmod(0o755)
    (folder / "control.txt").write_text("readable by anyone")
    (folder / "control.txt").chmod(0o644)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def probe(python: list[str], outside: Path, folder: Path, ports: dict[int, str]) -> list[str]:
    """Every try of `nobody` on the run's store, folder and ports; asserts each one failed."""
    import torch.distributed as dist

    # What torchrun --standalone served: a TCP store on loopback, which the probe does reach.
    standalone = dist.TCPStore("127.0.0.1", 0, 1, True, wait_for_workers=False)
    args = {"folder": str(folder), "store": str(folder / RENDEZVOUS_FILE), "control": str(outside / "control.txt"),
            "control_port": standalone.port, "ports": sorted(ports)}
    done = subprocess.run([*python, "-c", PROBE, json.dumps(args)], user=NOBODY, group=NOBODY, extra_groups=[],
                          capture_output=True, text=True, timeout=180,
                          env={"PYTHONPATH": sysconfig.get_paths()["purelib"], "PATH": "/usr/bin:/bin"})
    lines = done.stdout.splitlines()
    print("\n".join(lines))
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines[0].startswith("REACHED control"), lines  # the probe does reach what is not private
    reached = [line for line in lines[1:] if not line.startswith("refused")]
    assert reached[:1] == ["REACHED control: a store on loopback as torchrun --standalone kept it"], lines
    assert reached[1:] == [], "\n".join(lines)
    assert len(lines) == 7 + len(ports)
    assert not (folder / "planted").exists()
    return lines


def test_another_local_user_cannot_reach_or_join_a_rendezvous_while_it_waits(nobody, outside, tiny_models_dir):
    """The first process of two waits at its rendezvous for the second. Had the attack worked,
    `nobody` would have read or written the store (taking the second process's place, or writing
    what the first reads), or planted a file: a line 'REACHED' in the probe's output."""
    folder = outside / "job"
    config = LoraTrainConfig(nproc_per_node=2).model_dump()
    prepare(folder, tiny_models_dir / "airlock-tiny", config, RECORDS)
    env = {**child_env(1, []), **process_env(read_placement(folder), folder, 0, 0)}
    first = subprocess.Popen([sys.executable, "-m", "airlock.train.job", str(folder)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Waiting, the process holds its store file open and gloo's listener for its peer.
        wait_for(lambda: first.poll() is not None or (folder / RENDEZVOUS_FILE).exists() and listening({first.pid}),
                 120, "the first process at its rendezvous")
        ports = {port: address for address, port, _ in listening({first.pid})}
        probe(nobody, outside, folder, ports)
        assert all(ipaddress_is_loopback(address) for address in ports.values()), ports
        assert first.poll() is None  # still waiting: no one took the second process's place
    finally:
        first.kill()
        first.communicate()


def test_another_local_user_cannot_reach_the_rendezvous_of_a_running_two_process_run(nobody, outside,
                                                                                     tiny_models_dir):
    """Had it worked, `nobody` would have read or written the run's store (and so could have
    steered or joined the run), planted a file in its folder, or found a store on one of the
    run's ports: a line 'REACHED' in the probe's output."""
    folder = outside / "job"
    # Far more steps than the test waits for: it stops the run itself once the probe is done.
    config = LoraTrainConfig(epochs=1000, rank=4, batch_size=1, seed=3, nproc_per_node=2,
                             checkpoint_every=0).model_dump()
    prepare(folder, tiny_models_dir / "airlock-tiny", config, RECORDS)
    launcher = subprocess.Popen(launch_command(folder, config), env=child_env(1, []),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: steps(folder) >= 1 or launcher.poll() is not None, 240, "the run's first step")
        assert launcher.poll() is None, launcher.communicate()[0][-3000:]
        assert (folder / RENDEZVOUS_FILE).exists()
        ports = {port: address for address, port, _ in listening(set(run_pids(launcher.pid)))}
        probe(nobody, outside, folder, ports)
        at_probe = steps(folder)
        assert launcher.poll() is None, "the run ended before the probe did"
        wait_for(lambda: steps(folder) > at_probe, 120, "a step after the probe")
        (folder / "stop").write_text("cancel")
        output = launcher.communicate(timeout=300)[0]
    finally:
        launcher.kill()
    # The collectives' ports (gloo's pairs) face loopback only, and none of them is a store.
    assert ports and all(ipaddress_is_loopback(address) for address in ports.values()), ports
    assert launcher.returncode == 0, output[-3000:]
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert events[-1]["kind"] == "stopped" and steps(folder) > at_probe  # it trained on past the probe


def ipaddress_is_loopback(address: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(address).is_loopback
