"""Starting the processes of a multi-process training job: `python -m airlock.train.launch JOB_DIR
[--node-rank N]`.

torchrun is not used: its elastic agent keeps its rendezvous state pickled in a TCP store that any
local user can reach (and, with a c10d endpoint, that whoever runs the endpoint writes), so a
process that reached the store ran its code as the appliance's user. Instead this launcher starts
`nproc_per_node` job processes itself, each told its rank, and they meet at a store that no one
else can open or write:

- one host: a FileStore, a file in the job's folder (mode 0700, the appliance's user only), with
  gloo (or NCCL) bound to the loopback interface;
- several hosts: the TCP store served by the first process, bound to the first training host's
  address on the training network, and the collectives on the training network's interface.
  Where training runs is the operator's configuration (AIRLOCK_TRAINING_HOSTS,
  AIRLOCK_TRAINING_RDZV_PORT, AIRLOCK_TRAINING_IFNAME), written into the job by the worker; a
  workflow asks only for `nnodes` and `nproc_per_node`.

When one process fails the others are ended, as torchrun's agent did, so no rank waits forever
for a peer that is gone. The launcher dies with its parent (the worker), and the job processes
with the launcher.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from airlock.children import die_with_parent
from airlock.config import Settings
from airlock.errors import InvalidInput
from airlock.train.distributed import RENDEZVOUS_ENV
from airlock.train.job import JOB

RENDEZVOUS_FILE = "rendezvous"
PLACEMENT_SETTINGS = "AIRLOCK_TRAINING_HOSTS, AIRLOCK_TRAINING_RDZV_PORT and AIRLOCK_TRAINING_IFNAME"
POLL_S = 0.2
GRACE_S = 10.0


@dataclass(frozen=True)
class Placement:
    """Where a job's processes run and meet: the workflow's counts, the operator's hosts."""

    nproc_per_node: int = 1
    nnodes: int = 1
    hosts: tuple[str, ...] = ()  # the training hosts' addresses; the first serves the rendezvous
    rdzv_port: int = 29400
    ifname: str = ""  # the training network's interface (several hosts)

    @classmethod
    def of(cls, settings: Settings, config: dict) -> Placement:
        """The placement of a run, or InvalidInput when the appliance has too few training hosts."""
        placement = cls(nproc_per_node=config.get("nproc_per_node", 1), nnodes=config.get("nnodes", 1),
                        hosts=tuple(settings.training_host_list), rdzv_port=settings.training_rdzv_port,
                        ifname=settings.training_ifname)
        if placement.nnodes > max(len(placement.hosts), 1):
            raise InvalidInput(too_few_hosts(placement.nnodes, len(placement.hosts)))
        return placement

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def rendezvous(self, folder: Path) -> str:
        if self.nnodes == 1:
            return f"file:{folder / RENDEZVOUS_FILE}"
        address = self.hosts[0]
        return f"tcp:[{address}]:{self.rdzv_port}" if ":" in address else f"tcp:{address}:{self.rdzv_port}"

    def interface(self) -> str:
        """The network interface the collectives bind to: loopback unless hosts must meet."""
        return "lo" if self.nnodes == 1 else self.ifname


def too_few_hosts(nnodes: int, hosts: int) -> str:
    return (f"nnodes {nnodes} is more than the {hosts} training host(s) this appliance is configured with; "
            f"the operator lists the training hosts in AIRLOCK_TRAINING_HOSTS (provisioning: the inventory "
            f"group of training hosts)")


def read_placement(folder: Path) -> Placement:
    data = json.loads((folder / JOB).read_text()).get("placement") or {}
    return Placement(**{**data, "hosts": tuple(data.get("hosts", ()))})


def process_env(placement: Placement, folder: Path, node_rank: int, local_rank: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(RANK=str(node_rank * placement.nproc_per_node + local_rank), LOCAL_RANK=str(local_rank),
               WORLD_SIZE=str(placement.world_size), LOCAL_WORLD_SIZE=str(placement.nproc_per_node))
    env[RENDEZVOUS_ENV] = placement.rendezvous(folder)
    if placement.interface():
        env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = placement.interface()
    return env


def start(folder: Path, node_rank: int = 0) -> list[subprocess.Popen]:
    placement = read_placement(folder)
    if not 0 <= node_rank < placement.nnodes:
        raise InvalidInput(f"--node-rank {node_rank}: this run has {placement.nnodes} node(s), ranked 0 to "
                           f"{placement.nnodes - 1}")
    if placement.nnodes == 1:
        # A store file left by an earlier attempt would hold that attempt's keys.
        (folder / RENDEZVOUS_FILE).unlink(missing_ok=True)
    return [subprocess.Popen([sys.executable, "-m", "airlock.train.job", str(folder)], preexec_fn=die_with_parent,
                             env=process_env(placement, folder, node_rank, local))
            for local in range(placement.nproc_per_node)]


def supervise(processes: list[subprocess.Popen]) -> int:
    """Wait for every process; when one fails, end the others and return its exit code."""
    while True:
        codes = [p.poll() for p in processes]
        failed = next((c for c in codes if c not in (None, 0)), None)
        if failed is not None:
            for p in processes:
                if p.poll() is None:
                    p.terminate()
            deadline = time.monotonic() + GRACE_S
            for p in processes:
                try:
                    p.wait(max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            return failed if failed > 0 else 128 - failed
        if all(c == 0 for c in codes):
            return 0
        time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airlock.train.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("job_dir", type=Path, help="the job's folder, as the worker prepared it")
    parser.add_argument("--node-rank", type=int, default=0,
                        help="this host's place among the run's nodes (0: the worker's host; others 1, 2, ...)")
    args = parser.parse_args(argv)
    try:
        processes = start(args.job_dir, args.node_rank)
    except InvalidInput as exc:
        print(exc.message, file=sys.stderr)
        return 2
    return supervise(processes)


if __name__ == "__main__":
    die_with_parent()
    sys.exit(main())
