"""Several GPUs, or several machines, through torchrun: one process (rank) per device.

    torchrun --nproc_per_node 4 -m extremeaug train ...

Every rank builds the same data, draws the same global batch order and transforms from (seed, epoch, step)
and trains on its slice of each global batch under DistributedDataParallel. The batch soft Dice is taken
over the global batch (its sums are all-reduced), so N ranks at a per-rank batch of B/N learn what one
process at batch B does, up to BatchNorm: its statistics are each rank's own (a "ghost batch" of B/N). Rank 0
alone validates and writes checkpoints, progress and the model. Stop decisions (time budget, stop file,
SIGTERM to any rank) are agreed across ranks every AGREE_EVERY steps, so no rank waits forever in a
collective. Without torchrun's environment this is a world of one and nothing here costs anything.

The project worker (`project train --gpus N`) starts its ranks itself, with the environment torchrun would give
them (`rank_environment`): torchrun's own rendezvous asks for a libuv TCPStore whatever USE_LIBUV says, and
torch's Windows wheels are built without libuv (pytorch/pytorch#148283), so torchrun cannot start on the
Windows machines most clinicians use. `init_process_group`'s env:// rendezvous honours USE_LIBUV=0.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Dict, Mapping

import torch
import torch.distributed as dist

AGREE_EVERY = 10          # steps between stop agreements: one small all-reduce, and one host sync, each
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, n: int) -> slice:
        """This rank's rows of a global batch of n (the first n % size ranks take one more; a batch smaller than
        the world, an epoch's last one at most, gives some ranks a row twice rather than none)."""
        if n < self.size:
            return slice(self.rank % n, self.rank % n + 1)
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def global_sums(self, local: torch.Tensor) -> torch.Tensor:
        """Sums over the global batch whose gradient flows into this rank's share only, scaled by the world
        size: DistributedDataParallel then averages the ranks' gradients into the global batch's gradient."""
        if not self.distributed:
            return local
        total = local.detach().clone()
        dist.all_reduce(total)
        return local * self.size + (total - local * self.size).detach()

    def agree(self, code: int, device: torch.device) -> int:
        """The largest of the ranks' codes (0 = go on)."""
        if not self.distributed:
            return code
        flag = torch.tensor([code], device=device, dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def join(device: torch.device):
    """The world torchrun started this process in, and the device this rank trains on (cuda:LOCAL_RANK); a
    world of one and `device` itself outside torchrun. The process group is joined once per process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        nccl = device.type == "cuda" and dist.is_nccl_available()   # Windows builds have gloo only
        dist.init_process_group("nccl" if nccl else "gloo", timeout=TIMEOUT)
    return world, device


def rank_environment(rank: int, size: int, port: int, base: Mapping[str, str]) -> Dict[str, str]:
    """`base` plus what torchrun sets for rank `rank` of `size` on one machine, rendezvous at 127.0.0.1:`port`
    without libuv (which only pays beyond a thousand ranks)."""
    env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), LOCAL_WORLD_SIZE=str(size),
               GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), USE_LIBUV="0")
    env.setdefault("OMP_NUM_THREADS", "1")   # as torchrun does: the ranks share the machine's cores
    return env


def free_port() -> int:
    """A TCP port free on this machine now, for rank 0's rendezvous server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
