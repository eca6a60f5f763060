"""Data-parallel meta-training under ``torchrun``: one process per device, tasks sharded.

Each rank adapts its share of a meta-batch's tasks; DistributedDataParallel all-reduces the
meta-gradients. Losses are scaled so that the averaged gradient is that of the global batch's
mean query loss, whatever the shard sizes: a run on N ranks matches one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    def shard(self, n: int) -> slice:
        """This rank's tasks of a batch of ``n``: a strided slice, so shards differ by <= 1."""
        return slice(self.rank, n, self.size)


def init_from_env(device: torch.device) -> World:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return World(rank=rank, size=size, local_rank=local_rank)


def shutdown(world: World) -> None:
    if world.enabled and dist.is_initialized():
        dist.destroy_process_group()
