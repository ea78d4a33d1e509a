"""A run, built once from its composed config: placement, data, model, method, optimizer, schedule, loaders and
speed settings. dlb.trainer.Trainer receives it and resumes, trains and evaluates it."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from omegaconf import DictConfig

from dlb import config as C
from dlb.data import augment as A
from dlb.data.datasets import ArrayDataset, load_dataset, prepare
from dlb.data.loader import make_loader
from dlb.device import distributed
from dlb.device.placement import GpuSlot, resolve_device, set_threads
from dlb.device.speed import build_optimizer, compile_model, keep_heap, resolve_speed
from dlb.errors import ConfigError
from dlb.methods import METHODS, build_method
from dlb.models import build_model
from dlb.run.folder import RunFolder
from dlb.run.record import environment_info, git_info, seed_everything


class Run:
    """The parts of one run. `model` is the plain module (checkpoints, evaluation and teachers see its state_dict
    keys whatever the wrapping); `net` runs the training forwards: the model under DDP and/or compiled."""

    def __init__(self, cfg: DictConfig, out_dir: str | Path, data: tuple[ArrayDataset, ArrayDataset] | None = None,
                 overrides: list[str] | None = None):
        """`data` = (train, test) in memory instead of dataset.name from disk (subsets and label noise still apply);
        `overrides`: the command line, kept in .hydra/overrides.yaml."""
        self.cfg, self.overrides, self.folder = cfg, overrides, RunFolder(out_dir)
        self.out_dir = self.folder.path
        self.out_dir.mkdir(parents=True, exist_ok=True)
        t, d, o = cfg.trainer, cfg.dataset, cfg.optim
        # Placement: one process per GPU under torchrun (ddp), a locked GPU slot (held until the run closes), or a
        # device. own_group: the DDP process group was created here (and is destroyed by close).
        rank, world_size, self.own_group, self.slot = 0, 1, False, None
        if t.ddp:
            rank, world_size, device, self.own_group = distributed.setup(t.device)
        elif t.device == "slot":
            self.slot = GpuSlot(t.jobs_per_gpu)
            device = self.slot.device
        else:
            device = resolve_device(t.device)
        self.device, self.world_size, self.is_main = device, world_size, rank == 0  # rank 0 writes the files
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # stray allocations (e.g. by libraries) go to this run's GPU
        seed_everything(cfg.seed, t.deterministic)
        set_threads(t.threads)  # deliberately: torch's one-per-core default crawls on a shared machine

        if data is None:
            data = [load_dataset(d.name, d.root, train, download=d.download, image_size=d.image_size)
                    for train in (True, False)]
        prepared = prepare(*data, d, cfg.noise)
        train_ds, test_ds = prepared.train, prepared.test
        self.train_size, self.test_size, self.num_classes = len(train_ds), len(test_ds), train_ds.num_classes
        self.data_fingerprint, self.noise_record = prepared.fingerprint, prepared.noise_record
        self.noise_rate_realised = prepared.noise_rate_realised

        # Speed settings, resolved once for this device and run length (trainer.compile=auto needs the steps).
        steps_per_epoch = min(math.ceil(self.train_size / (t.batch_size * world_size)),
                              t.limit_train_batches or math.inf)
        speed = resolve_speed(t, o, device, steps_per_epoch * t.epochs, METHODS[cfg.method.name].rules_out(cfg.method))
        # keep_heap() applies trainer.keep_heap to the process; False on a C library without glibc's mallopt
        self.speed = speed = dataclasses.replace(speed, keep_heap=speed.keep_heap and keep_heap())
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if speed.bf16 else None

        model = build_model(cfg, self.num_classes).to(device)
        method = build_method(cfg.method, num_classes=self.num_classes, data=prepared.fingerprint,
                              train_size=self.train_size, run_cfg=cfg, out_dir=self.out_dir).to(device)
        if speed.channels_last:  # (a teacher's weights, tfkd_self's, in the model's memory format too)
            model, method = model.to(memory_format=torch.channels_last), method.to(memory_format=torch.channels_last)
        ddp = torch.nn.parallel.DistributedDataParallel
        net = ddp(model, device_ids=[device] if device.type == "cuda" else None) if t.ddp else model
        self.model, self.net, self.method = model, compile_model(net, speed.compile), method
        self.num_params = sum(p.numel() for p in model.parameters())

        self.optimizer = build_optimizer(o, model.parameters(), fused=speed.fused)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, C.milestones(cfg), gamma=o.gamma)
        self.warmup_steps = o.warmup_epochs * steps_per_epoch  # optim.warmup_epochs in optimizer steps

        loader_kw = dict(num_workers=d.num_workers) if d.loader == "torch" else {}
        batch_order = method.batch_order(train_ds.labels, t.batch_size)
        if batch_order is not None:
            if d.loader != "device":
                raise ConfigError(f"dataset.loader={d.loader}: method={cfg.method.name} needs its own batch order, "
                                  "which only the device loader provides; use dataset.loader=device")
            loader_kw["batch_order"] = batch_order
        shard = dict(rank=rank, world_size=world_size) if world_size > 1 else {}  # DDP: this rank's part
        common = dict(seed=cfg.seed, device=device, channels_last=speed.channels_last, crop_size=d.image_size, **shard)
        self.train_loader = make_loader(train_ds, kind=d.loader, batch_size=t.batch_size, train=True, augment=d.augment,
                                        num_views=method.num_views, padding=d.padding, rotation=d.rotation,
                                        batch_augment=A.build(cfg.augment, method.paired_rows), **common, **loader_kw)
        self.test_loader = make_loader(test_ds, kind="device", batch_size=speed.eval_batch_size, train=False, **common)
        self.config_dict = C.to_container(cfg)  # the resolved config
        # versions, device and threads, code commit: read once (git runs a subprocess), written with every summary
        self.environment = {**environment_info(device), **git_info()}

    def close(self) -> None:
        """Release what the run holds: its GPU slot, the process group it created. Idempotent."""
        if self.slot is not None:
            self.slot.close()
        if self.own_group and distributed.dist.is_initialized():
            distributed.dist.destroy_process_group()
            self.own_group = False
