"""Training in several processes (DDP): which examples this process trains, the few things every
process must agree on, and how the processes find each other.

Each step's examples are dealt out round-robin, so a step of B examples in P processes trains
the same examples as one process would; the loss is normalised by the answer tokens of the whole
step, so the gradients DDP averages are those of one process with the same global batch. Only the
first process writes checkpoints, events and the adapter; a stop requested of the first process
is agreed by all at the same step boundary.

Nothing that passes between processes is unpickled: values are agreed as JSON in a uint8 tensor,
and the rendezvous is a store read through its string API only (`airlock.train.launch` says
which store, and why no other process can reach it).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

# The launcher hands each process its rendezvous: `file:PATH` (one host: a file in the job's
# private folder) or `tcp:ADDRESS:PORT` (several hosts: the store on the training network).
RENDEZVOUS_ENV = "AIRLOCK_RENDEZVOUS"
# Long enough for an operator to start the other hosts' nodes of a multi-host run.
RENDEZVOUS_TIMEOUT = timedelta(minutes=30)
_LISTENERS: list[socket.socket] = []


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, examples: list) -> tuple[list, float]:
        """This process's examples of a step, and their weight: a process dealt none trains the
        step's last example with weight 0, so that every process takes part in the gradient
        exchange of every step."""
        mine = examples[self.rank::self.size]
        return (mine, 1.0) if mine else (examples[-1:], 0.0)

    def all_sum(self, value: float) -> float:
        if self.size == 1:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=_device())
        dist.all_reduce(tensor)
        return float(tensor.item())

    def agree(self, value):
        """The first process's `value` (anything JSON holds), in every process: its JSON bytes
        are broadcast as a tensor, length first, so no process ever unpickles another's data."""
        if self.size == 1:
            return value
        import torch
        import torch.distributed as dist

        data = json.dumps(value).encode() if self.main else b""
        length = torch.tensor([len(data)], dtype=torch.int64, device=_device())
        dist.broadcast(length, src=0)
        if self.main:
            box = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(_device())
        else:
            box = torch.empty(int(length.item()), dtype=torch.uint8, device=_device())
        dist.broadcast(box, src=0)
        return json.loads(bytes(box.cpu().tolist()).decode())

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


def _device() -> str:
    import torch.distributed as dist

    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def open_store(rendezvous: str, rank: int, size: int):
    """The store the processes meet at; a `tcp:` store is served by the first process, bound to
    the configured address alone (torch's TCPStore would otherwise listen on every interface)."""
    import torch.distributed as dist

    kind, _, where = rendezvous.partition(":")
    if kind == "file":
        return dist.FileStore(where, size)
    if kind != "tcp":
        raise ValueError(f"{RENDEZVOUS_ENV}: unknown rendezvous {rendezvous!r} (file:PATH or tcp:ADDRESS:PORT)")
    address, _, port = where.rpartition(":")
    address = address.strip("[]")
    if rank != 0:
        return dist.TCPStore(address, int(port), size, is_master=False, timeout=RENDEZVOUS_TIMEOUT)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, int(port)))
    store = dist.TCPStore(address, int(port), size, is_master=True, timeout=RENDEZVOUS_TIMEOUT,
                          wait_for_workers=False, master_listen_fd=listener.fileno())
    _LISTENERS.append(listener)  # the store serves on this socket: it stays open with the process
    return store


def world_from_env() -> World:
    """The world the launcher describes in the environment; the process group is joined here."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    import torch
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    store = open_store(os.environ[RENDEZVOUS_ENV], rank, size)
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo", store=store, rank=rank,
                            world_size=size, timeout=RENDEZVOUS_TIMEOUT)
    return World(rank=rank, size=size, local_rank=local_rank)


def wrap(model, world: World):
    """The model DDP trains, or the model itself in one process."""
    if world.size == 1:
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.local_rank] if torch.cuda.is_available() else None
    return DistributedDataParallel(model, device_ids=ids)
