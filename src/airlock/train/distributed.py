"""Training in several processes (torchrun, DDP): which examples this process trains, and the
few things every process must agree on.

Each step's examples are dealt out round-robin, so a step of B examples in P processes trains
the same examples as one process would; the loss is normalised by the answer tokens of the whole
step, so the gradients DDP averages are those of one process with the same global batch. Only the
first process writes checkpoints, events and the adapter; a stop requested of the first process
is agreed by all at the same step boundary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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

        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def agree(self, value):
        """The first process's `value`, in every process."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


def world_from_env() -> World:
    """The world torchrun describes in the environment; the process group is joined here."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank)


def wrap(model, world: World):
    """The model DDP trains, or the model itself in one process."""
    if world.size == 1:
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.local_rank] if torch.cuda.is_available() else None
    return DistributedDataParallel(model, device_ids=ids)
