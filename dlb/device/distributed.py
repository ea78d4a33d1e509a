"""Data parallelism over processes (trainer.ddp=true under torchrun; docs/performance.md, "Several GPUs: DDP")."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from dlb.errors import ConfigError


def setup(device_name: str) -> tuple[int, int, torch.device, bool]:
    """Join torchrun's process group: (rank, world_size, this process's device, whether we created the group)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError("trainer.ddp=true: start the run with torchrun, e.g. torchrun --nproc_per_node <gpus> -m "
                          "dlb.train trainer.ddp=true ...")
    rank, world, local = (int(os.environ.get(k, 0)) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if device_name.startswith("cuda") and not cuda:
        raise ConfigError(f"trainer.device={device_name}: CUDA is not available; use trainer.device=cpu for gloo")
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return rank, world, device, created


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In place, on the device (no host sync); the identity in a single process."""
    if active():
        dist.all_reduce(t)
    return t


def all_gather_rows(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's rows in rank order; the shapes must be equal on all ranks (the train shard's batches are)."""
    if not active():
        return list(tensors)
    gathered = [t.new_empty((dist.get_world_size() * t.shape[0], *t.shape[1:])) for t in tensors]
    for buf, t in zip(gathered, tensors):
        dist.all_gather_into_tensor(buf, t.contiguous())
    return gathered


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank `src`'s buffers (BatchNorm statistics): all evaluate the network that rank 0 saves."""
    if active():
        for b in module.buffers():
            dist.broadcast(b, src)


def shard(batches: list[torch.Tensor], rank: int, world: int, *, train: bool,
          global_batches: bool) -> list[torch.Tensor]:
    """This rank's part of an epoch's index batches (`batches` is the same on every rank; docs/performance.md, DDP)."""
    if world == 1:
        return batches
    if not train:
        return batches[rank::world]  # whole batches, no padding: evaluation needs no collective per batch
    if global_batches:  # equal slices keep PS-KD's all_gather simple; the remainder of the last sits out
        sizes = [len(b) // world for b in batches]  # this rank's rows of each global batch
        return [b[rank * m:(rank + 1) * m] for b, m in zip(batches, sizes) if m]
    # a method's own batch order: whole batches r, r+world, ..., padded with the first so every rank takes as many steps
    n = -(-len(batches) // world) * world  # round up to a multiple of world
    return [batches[i % len(batches)] for i in range(rank, n, world)]
