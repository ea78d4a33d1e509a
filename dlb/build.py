"""A run, built once from its composed config: placement, data, model, method, optimizer, schedule, loaders and
speed settings. dlb.trainer.Trainer then resumes, trains and evaluates it."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig

from dlb import config as C
from dlb.data import augment as A
from dlb.data.datasets import ArrayDataset, load_dataset, prepare
from dlb.data.loader import make_loader
from dlb.device import distributed
from dlb.device.placement import GpuSlot, resolve_device, set_threads
from dlb.device.speed import Speed, build_optimizer, compile_model, keep_heap, resolve_speed
from dlb.errors import ConfigError
from dlb.methods import METHODS, Method, build_method
from dlb.models import build_model
from dlb.run.folder import RunFolder
from dlb.run.record import environment_info, git_info, seed_everything


@dataclass(eq=False)
class Run:
    """The parts of one run. `model` is the plain module (checkpoints, evaluation and teachers see its state_dict
    keys whatever the wrapping); `net` runs the training forwards: the model under DDP and/or compiled."""
    cfg: DictConfig
    folder: RunFolder
    overrides: list[str] | None
    # placement: rank 0 of world_size processes writes the files
    device: torch.device
    rank: int
    world_size: int
    own_group: bool  # the DDP process group was created here (and is destroyed by close)
    slot: GpuSlot | None
    # the prepared data
    train_size: int
    test_size: int
    num_classes: int
    data_fingerprint: dict
    noise_record: dict | None
    noise_rate_realised: float
    # what trains
    model: torch.nn.Module
    net: torch.nn.Module
    num_params: int
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    warmup_steps: int  # optim.warmup_epochs in optimizer steps
    train_loader: object
    test_loader: object
    speed: Speed
    autocast: Callable | None  # bf16 autocast of the forwards, or None
    config_dict: dict  # the resolved config
    environment: dict  # versions, device and threads, code commit

    @property
    def is_main(self) -> bool:
        return self.rank == 0  # only rank 0 writes files

    @property
    def out_dir(self) -> Path:
        return self.folder.path

    def close(self) -> None:
        """Release what the run holds: its GPU slot, the process group it created. Idempotent."""
        if self.slot is not None:
            self.slot.close()
        if self.own_group and distributed.dist.is_initialized():
            distributed.dist.destroy_process_group()
            self.own_group = False


def build_run(cfg: DictConfig, out_dir: str | Path, data: tuple[ArrayDataset, ArrayDataset] | None = None,
              overrides: list[str] | None = None) -> Run:
    """`data` = (train, test) in memory instead of dataset.name from disk (subsets and label noise still apply);
    `overrides`: the command line, kept in .hydra/overrides.yaml."""
    folder = RunFolder(out_dir)
    folder.path.mkdir(parents=True, exist_ok=True)
    t, d, o = cfg.trainer, cfg.dataset, cfg.optim
    # Placement: one process per GPU under torchrun (ddp), a locked GPU slot (held until the run closes), or a device.
    rank, world_size, own_group, slot = 0, 1, False, None
    if t.ddp:
        rank, world_size, device, own_group = distributed.setup(t.device)
    elif t.device == "slot":
        slot = GpuSlot(t.jobs_per_gpu)
        device = slot.device
    else:
        device = resolve_device(t.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # stray allocations (e.g. by libraries) go to this run's GPU
    seed_everything(cfg.seed, t.deterministic)
    set_threads(t.threads)  # deliberately: torch's one-per-core default crawls on a shared machine

    if data is None:
        data = (load_dataset(d.name, d.root, True, download=d.download, image_size=d.image_size),
                load_dataset(d.name, d.root, False, download=d.download, image_size=d.image_size))
    prepared = prepare(*data, d, cfg.noise)
    train_ds, test_ds = prepared.train, prepared.test
    train_size, num_classes = len(train_ds), train_ds.num_classes

    # Speed settings, resolved once for this device and run length (trainer.compile=auto needs the steps).
    steps_per_epoch = math.ceil(train_size / (t.batch_size * world_size))
    if t.limit_train_batches is not None:
        steps_per_epoch = min(steps_per_epoch, t.limit_train_batches)
    speed = resolve_speed(t, o, device, steps_per_epoch * t.epochs, METHODS[cfg.method.name].rules_out(cfg.method))
    if speed.keep_heap and not keep_heap():  # (a C library without glibc's mallopt)
        speed = dataclasses.replace(speed, keep_heap=False)

    model = build_model(cfg, num_classes).to(device)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = build_method(cfg.method, num_classes=num_classes, data=prepared.fingerprint, train_size=train_size,
                          run_cfg=cfg, out_dir=folder.path).to(device)
    if speed.channels_last:  # a teacher's weights (tfkd_self) in the model's memory format
        method = method.to(memory_format=torch.channels_last)
    net = model
    if t.ddp:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    net = compile_model(net, speed.compile)

    optimizer = build_optimizer(o, model.parameters(), fused=speed.fused)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, C.milestones(cfg), gamma=o.gamma)

    common = dict(device=device, channels_last=speed.channels_last, crop_size=d.image_size)
    loader_kw = dict(num_workers=d.num_workers) if d.loader == "torch" else {}
    batch_order = method.batch_order(train_ds.labels, t.batch_size)
    if batch_order is not None:
        if d.loader != "device":
            raise ConfigError(f"dataset.loader={d.loader}: method={cfg.method.name} needs its own batch order, "
                              "which only the device loader provides; use dataset.loader=device")
        loader_kw["batch_order"] = batch_order
    shard = dict(rank=rank, world_size=world_size) if world_size > 1 else {}  # DDP: this rank's part
    train_loader = make_loader(train_ds, kind=d.loader, batch_size=t.batch_size, train=True, seed=cfg.seed,
                               num_views=method.num_views, augment=d.augment, padding=d.padding,
                               rotation=d.rotation, batch_augment=A.build(cfg.augment, method.paired_rows),
                               **common, **loader_kw, **shard)
    test_loader = make_loader(test_ds, kind="device", batch_size=speed.eval_batch_size, train=False, seed=cfg.seed,
                              **common, **shard)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if speed.bf16 else None
    return Run(cfg=cfg, folder=folder, overrides=overrides, device=device, rank=rank, world_size=world_size,
               own_group=own_group, slot=slot, train_size=train_size, test_size=len(test_ds),
               num_classes=num_classes, data_fingerprint=prepared.fingerprint, noise_record=prepared.noise_record,
               noise_rate_realised=prepared.noise_rate_realised, model=model, net=net,
               num_params=sum(p.numel() for p in model.parameters()), method=method, optimizer=optimizer,
               scheduler=scheduler, warmup_steps=o.warmup_epochs * steps_per_epoch, train_loader=train_loader,
               test_loader=test_loader, speed=speed, autocast=autocast, config_dict=C.to_container(cfg),
               # read once (git runs a subprocess), written with every summary
               environment={**environment_info(device), **git_info()})
