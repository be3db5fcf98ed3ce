"""One run over several processes with torch.distributed, launched by torchrun.

`torchrun --nproc_per_node K -m harness run SUITE` starts K copies of the command; each reads its
rank from the environment torchrun sets. Every rank sees every optimizer step (the step source is
deterministic) and trains on its own rows of it, so the global batch is the one a single process
would use and no row is seen twice. Rank 0 alone writes records, checkpoints and reports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value on every rank (decisions such as "skip this run" must agree)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """Whether any rank's flag is set (a stop must happen at the same step on every rank)."""
        if not self.enabled:
            return flag
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        value = torch.tensor([int(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


NOT_DISTRIBUTED = Distributed()


def from_environment(device_type: str) -> Distributed:
    """The process group torchrun describes (gloo on a CPU, NCCL on GPUs), set up once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return NOT_DISTRIBUTED
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        # while rank 0 alone evaluates a finished run downstream (minutes to hours), the other ranks
        # wait in the next collective: the default 10-30 min timeout would kill them
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", timeout=timedelta(hours=24))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return Distributed(rank, world, local_rank)
