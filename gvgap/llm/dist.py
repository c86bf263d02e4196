"""Data parallel with no code change: torchrun / ``WORLD_SIZE > 1`` turns it on.

Every rank holds the full model and draws the same global batch from the same generator;
rank r keeps rows r, r+W, r+2W, … (DistributedSampler's striding), its loss is summed over
its rows and divided by the *global* batch size, and the gradients are summed across ranks
with one all-reduce per parameter — so every rank takes the same step as one process on the
global batch (up to float summation order). gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)``: from the process group when one is up, else the environment."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def setup(is_cuda: bool) -> None:
    """Start the process group when launched with several processes (no-op otherwise)."""
    rank, size = world()
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if is_cuda else "gloo", rank=rank, world_size=size)


def is_main() -> bool:
    """True on rank 0 (the only rank that writes files)."""
    return world()[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a global batch of row indices (stride W, offset rank)."""
    rank, size = world()
    return batch[rank::size]


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients across ranks (losses are already divided by the global batch)."""
    if world()[1] == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
