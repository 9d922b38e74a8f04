"""Thin helpers over torch.distributed that also work in a single process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env(device: torch.device) -> bool:
    """Join the process group described by env:// (torchrun / submitit) when WORLD_SIZE > 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return True


@torch.no_grad()
def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors from every rank along dim 0 (no gradient)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors from every rank along dim 0; gradients flow back to each owner."""
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather as differentiable_all_gather

    return torch.cat(differentiable_all_gather(tensor.contiguous()))


def broadcast(tensor: torch.Tensor, source: int = 0) -> torch.Tensor:
    if is_distributed():
        dist.broadcast(tensor, source)
    return tensor


def barrier() -> None:
    if is_distributed():
        dist.barrier()
