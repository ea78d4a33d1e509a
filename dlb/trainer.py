"""The method-agnostic training loop: data, model, method, SGD + MultiStepLR, evaluation, checkpoints, logs.

A run's output folder holds everything needed to reproduce and audit it (dlb/run/folder.py lists the files).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from dlb.data import augment as A
from dlb import config as C
from dlb.device import distributed
from dlb.run import folder as runfiles
from dlb.run import identity as runid
from dlb.run.checkpoint import RunLock, StopSignals, atomic_save, load_checkpoint, save_checkpoint
from dlb.data.datasets import ArrayDataset, load_dataset, prepare
from dlb.errors import ConfigError, Diverged, Preempted, ResumeError
from dlb.data.loader import make_loader
from dlb.methods import METHODS, Method, build_method
from dlb.metrics import evaluate
from dlb.models import build_model
from dlb.run.loggers import RunLogger
from dlb.device.placement import GpuSlot, busy_cpu_note, resolve_device, set_threads
from dlb.device.speed import build_optimizer, compile_model, keep_heap, native_bf16, resolve_speed
from dlb.run.record import environment_info, git_info, rng_states, seed_everything, set_rng_states
from dlb.device.memory import peak_memory_bytes



# A NaN/Inf loss is caught by reading the on-device loss sums every FINITE_CHECK_EVERY steps and at each epoch end:
# one host sync per check, never one per step.
FINITE_CHECK_EVERY = 50
PROGRESS_EVERY_S = 120.0  # a progress line inside long epochs (train.log; stdout when it is not a terminal)


class _NoLogger:
    """DDP ranks other than 0: rank 0 logs the rows (reduced over all ranks)."""

    def log(self, row): pass

    def summary(self, summary): pass

    def finish(self, exit_code=0): pass


class Trainer:
    # Set by fit (the stop signals) and by try_resume (the position inside an epoch of a preemption checkpoint).
    _stop: StopSignals | None = None
    partial: dict | None = None

    def __init__(self, cfg: DictConfig, out_dir: str | Path,
                 data: tuple[ArrayDataset, ArrayDataset] | None = None, overrides: list[str] | None = None):
        """`data` = (train, test) in memory instead of reading dataset.name from disk (benchmarks, your own data);
        dataset.train_subset/test_subset and label noise still apply to it. `overrides`: the command line, kept in
        .hydra/overrides.yaml."""
        self.cfg, self.out_dir, self.overrides = cfg, Path(out_dir), overrides
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        t = cfg.trainer
        # Placement: one process per GPU under torchrun (ddp), a locked GPU slot (device=slot, held until fit
        # ends), or the named device.
        self.rank, self.world_size, self._own_group, self.slot = 0, 1, False, None
        if t.ddp:
            self.rank, self.world_size, self.device, self._own_group = distributed.setup(t.device)
        elif t.device == "slot":
            self.slot = GpuSlot(t.jobs_per_gpu)
            self.device = self.slot.device
        else:
            self.device = resolve_device(t.device)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)  # stray allocations (e.g. by libraries) go to this run's GPU
        self.is_main = self.rank == 0  # only rank 0 writes files
        seed_everything(cfg.seed, t.deterministic)
        set_threads(t.threads)  # deliberately: torch's one-per-core default crawls on a shared machine

        d = cfg.dataset
        if data is None:
            data = (load_dataset(d.name, d.root, True, download=d.download, image_size=d.image_size),
                    load_dataset(d.name, d.root, False, download=d.download, image_size=d.image_size))
        prepared = prepare(*data, d, cfg.noise)
        self.data_fingerprint, self.noise_record = prepared.fingerprint, prepared.noise_record
        self.noise_rate_realised = prepared.noise_rate_realised
        train_ds, test_ds = prepared.train, prepared.test
        self.train_size, self.test_size, self.num_classes = len(train_ds), len(test_ds), train_ds.num_classes

        # Speed settings, resolved once for this device and run length (trainer.compile=auto needs the steps).
        steps_per_epoch = math.ceil(self.train_size / (t.batch_size * self.world_size))
        if t.limit_train_batches is not None:
            steps_per_epoch = min(steps_per_epoch, t.limit_train_batches)
        self.warmup_steps = cfg.optim.warmup_epochs * steps_per_epoch  # optim.warmup_epochs in optimizer steps
        self.speed = resolve_speed(t, cfg.optim, self.device, steps_per_epoch * t.epochs,
                                   METHODS[cfg.method.name].rules_out(cfg.method))
        if self.speed.keep_heap and not keep_heap():  # (a C library without glibc's mallopt)
            self.speed = dataclasses.replace(self.speed, keep_heap=False)

        self.model = build_model(cfg, self.num_classes).to(self.device)
        if self.speed.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.method: Method = build_method(cfg.method, num_classes=self.num_classes, data=self.data_fingerprint,
                                           train_size=self.train_size,
                                           run_cfg=cfg, out_dir=self.out_dir).to(self.device)
        if self.speed.channels_last:  # a teacher's weights (tfkd_self) in the model's memory format
            self.method = self.method.to(memory_format=torch.channels_last)
        # self.net runs the training forwards: the model, under DDP and/or compiled. self.model stays the plain
        # module: checkpoints, evaluation and teachers see its state_dict keys whatever the wrapping.
        self.net = self.model
        if t.ddp:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model,
                                               device_ids=[self.device] if self.device.type == "cuda" else None)
        self.net = compile_model(self.net, self.speed.compile)

        o = cfg.optim
        self.optimizer = build_optimizer(o, self.model.parameters(), fused=self.speed.fused)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, C.milestones(cfg), gamma=o.gamma)

        common = dict(device=self.device, channels_last=self.speed.channels_last, crop_size=d.image_size)
        loader_kw = dict(num_workers=d.num_workers) if d.loader == "torch" else {}
        batch_order = self.method.batch_order(train_ds.labels, t.batch_size)
        if batch_order is not None:
            if d.loader != "device":
                raise ConfigError(f"dataset.loader={d.loader}: method={cfg.method.name} needs its own batch order, "
                                    "which only the device loader provides; use dataset.loader=device")
            loader_kw["batch_order"] = batch_order
        shard = dict(rank=self.rank, world_size=self.world_size) if self.world_size > 1 else {}  # DDP: this rank's part
        self.train_loader = make_loader(train_ds, kind=d.loader, batch_size=t.batch_size, train=True, seed=cfg.seed,
                                        num_views=self.method.num_views, augment=d.augment, padding=d.padding,
                                        rotation=d.rotation,
                                        batch_augment=A.build(cfg.augment, self.method.paired_rows), **common,
                                        **loader_kw, **shard)
        self.test_loader = make_loader(test_ds, kind="device", batch_size=self.speed.eval_batch_size, train=False,
                                       seed=cfg.seed, **common, **shard)
        self.autocast = None
        if self.speed.bf16:
            self.autocast = lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)

        self.epoch, self.step = 0, 0  # epochs completed, optimizer steps taken
        self.history: list[dict] = []
        self.best = {"test_acc": -1.0}
        self.time_offset = 0.0  # training time of earlier processes of this run (resumed)
        self.config_dict = C.to_container(cfg)
        # Versions, device and threads, code commit: read once (git runs a subprocess), written with every summary.
        self.environment = {**environment_info(self.device), **git_info()}

    # --- checkpoints -------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "method": self.method.method_state(), "rng": rng_states(), "history": self.history,
                "best": self.best, "train_time_s": self.time_offset, "config": self.config_dict,
                "data": self.data_fingerprint, "world_size": self.world_size, "partial": self.partial}

    def try_resume(self) -> bool:
        state = load_checkpoint(self.ckpt_dir)
        if state is None:
            return False
        if not self.cfg.resume:
            raise ResumeError(f"{self.out_dir} already holds a run (epoch {state['epoch']}); pass resume=true to "
                              "continue it, or pick another output dir with hydra.run.dir=<dir>")
        data_diffs = runid.data_differences(state.get("data"), self.data_fingerprint)
        if data_diffs:
            raise ResumeError(f"{self.out_dir} holds a run trained on other data ({'; '.join(data_diffs)}); its "
                              "results belong to that data: give this data its own output dir (hydra.run.dir=<dir>), "
                              "or point dataset.root back at the data that run used")
        diffs = runid.differences(state.get("config", {}), self.config_dict)
        if diffs:
            raise ResumeError(f"{self.out_dir} holds a run with a different config ({'; '.join(diffs)}); "
                              "use another output dir (hydra.run.dir=<dir>) for this one")
        if state.get("world_size", 1) != self.world_size:  # DDP: the global batch is world_size x batch_size
            raise ResumeError(f"{self.out_dir} holds a run trained by {state.get('world_size', 1)} process(es); "
                              f"resume it with as many (this is {self.world_size}), or use another output dir")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:  # a folder of an older version (no data fingerprint) trained on other data
            why = (str(e).strip().splitlines()[1:2] or [str(e)])[0].strip()
            raise ResumeError(f"{self.out_dir} holds a model that does not fit this run ({why}); use another output "
                              "dir (hydra.run.dir=<dir>) for this one") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_method_state(state["method"], self.device)
        set_rng_states(state["rng"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self.best, self.time_offset = state["history"], state["best"], state["train_time_s"]
        self.partial = state.get("partial")  # saved by a stop signal mid-epoch; train_epoch continues from it
        return True

    # --- the loop ------------------------------------------------------------------------------------------
    def train_step(self, batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step on a batch: (logits, loss, named loss terms), all still on the device (no host sync).
        Gradients are zeroed before the method's step: a method may backpropagate part of its loss itself (DLB's
        method.backward=split)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.step < self.warmup_steps:
            self._warmup_lr()
        with self.autocast() if self.autocast else contextlib.nullcontext():
            logits, losses = self.method.training_step(self.net, batch)
        loss = sum(losses.values())
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return logits, loss, losses

    def _warmup_lr(self) -> None:
        """optim.warmup_epochs, as Tf-KD's WarmUpLR (its utils.py, stepped before each of the first epoch's steps):
        optimizer step k of the K warm-up steps runs at k/K of the scheduled lr, so the first at lr/K and the last
        at the lr itself, from which the epoch schedule goes on. Set from the step count: exact after a resume."""
        k, scheduled = self.step + 1, self.scheduler.get_last_lr()[0]  # the epoch's lr (also after a resume)
        for group in self.optimizer.param_groups:
            group["lr"] = scheduled * k / self.warmup_steps if k < self.warmup_steps else scheduled

    def train_epoch(self, epoch: int) -> tuple[dict, dict]:
        """One epoch of training: (train_loss, train_acc, timing and image counts; the means of the method's loss
        terms and diagnostics, by name)."""
        t = self.cfg.trainer
        self.model.train()
        self.method.train()
        self.method.on_epoch_start(epoch, t.epochs)
        self.train_loader.set_epoch(epoch)
        n_batches = len(self.train_loader)
        if t.limit_train_batches is not None:
            n_batches = min(n_batches, t.limit_train_batches)
        # Sums stay on the device; they are read at the end of the epoch and every FINITE_CHECK_EVERY steps.
        sums: dict[str, torch.Tensor] = {}
        zero = torch.zeros((), device=self.device)
        correct, seen = zero.clone(), 0
        first, time_before = 0, 0.0  # resumed mid-epoch: the saved step, sums and training time of this epoch
        if self.partial is not None and self.partial["epoch"] == epoch:
            p, self.partial = self.partial, None
            first, time_before, seen, correct = p["epoch_step"], p["train_time_s"], p["seen"], p["correct"].to(self.device)
            sums = {k: v.to(self.device) for k, v in p["sums"].items()}
        progress = t.progress if t.progress is not None else sys.stderr.isatty()
        batches = self.train_loader if first == 0 else self.train_loader.iter_from(first)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, total=n_batches, initial=first, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False)
        start = noted = time.perf_counter()
        for i, batch in enumerate(batches, start=first):
            if i >= n_batches:
                break
            logits, loss, losses = self.train_step(batch)
            b = logits.shape[0]  # logits are for the batch's first rows (CS-KD appends partner rows)
            seen += b
            for k, v in (("loss", loss), *losses.items(), *self.method.step_metrics.items()):
                sums[k] = sums.get(k, zero) + v.detach().float() * b
            correct += (logits.detach().argmax(1) == batch.y[:b]).sum()
            if time.perf_counter() - noted >= PROGRESS_EVERY_S:  # a line for log files (and for tail -f)
                noted = time.perf_counter()
                rate = (i + 1 - first) / (noted - start)  # steps/s, as queued: no host sync for it
                self._say(f"epoch {epoch + 1}/{t.epochs} step {i + 1}/{n_batches} ({rate * t.batch_size:.0f} img/s, "
                          f"epoch ETA {_clock((n_batches - i - 1) / rate)})", to_stdout=not progress)
            # (under DDP a signal waits for the epoch end: a rank alone must not enter _step_boundary's all-reduce)
            stop = self._stop is not None and self._stop.received is not None and self.world_size == 1
            if (i + 1) % FINITE_CHECK_EVERY == 0 or stop:
                self._step_boundary(epoch, i + 1, n_batches, sums, correct, seen,
                                    time_before + time.perf_counter() - start)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time_before + time.perf_counter() - start
        stats = torch.stack([correct, *sums.values(), torch.tensor(float(seen), device=self.device)])
        if self.world_size > 1:  # DDP: sums over the ranks, and every rank evaluates with rank 0's BatchNorm buffers
            distributed.all_reduce_sum(stats)
            distributed.broadcast_buffers(self.model)
        values = stats.tolist()  # the epoch's one host sync
        seen = int(values.pop())
        means = {k: v / seen for k, v in zip(sums, values[1:])}
        train = dict(train_loss=means.pop("loss"), train_acc=100 * values[0] / seen, train_time_s=elapsed,
                     train_img_per_s=seen / elapsed, train_images=seen)
        return train, means

    def _check_finite(self, where: str, terms: dict[str, float]) -> None:
        if not all(math.isfinite(v) for v in terms.values()):
            raise Diverged(f"training diverged {where} ({', '.join(f'{k}={v:.4g}' for k, v in terms.items())}); "
                           "the last good checkpoint is kept: lower optim.lr (or the method's loss weights) and start "
                           "over in another output dir (hydra.run.dir=<dir>)")

    def _step_boundary(self, epoch: int, k: int, n: int, sums: dict, correct, seen: int, elapsed: float) -> None:
        """After step k (1-based) of an epoch of n: catch a NaN/Inf loss, then act on a stop signal by saving the
        position inside the epoch (the device loader's batches are a pure function of (seed, epoch, step), so
        train_epoch can continue it with iter_from) and raising Preempted."""
        stacked = torch.stack(list(sums.values()))
        if self.world_size > 1:  # DDP: a NaN on any rank stops every rank, or the others would wait for it forever
            distributed.all_reduce_sum(stacked)
        means = [v / (seen * self.world_size) for v in stacked.tolist()]  # one host sync
        self._check_finite(f"in epoch {epoch + 1} by step {k} of {n}", dict(zip(sums, means)))
        if self._stop is None or self._stop.received is None or self.world_size > 1:
            return  # DDP: the ranks agree on stopping at the epoch end (fit)
        if self.cfg.dataset.loader != "device":
            raise Preempted(f"{self._stop.name}: stopped in epoch {epoch + 1} at step {k}; dataset.loader="
                            f"{self.cfg.dataset.loader} cannot resume mid-epoch, so epoch {epoch + 1} restarts from the "
                            "last checkpoint when the same command runs again", interrupted=self._stop.interrupted)
        self.partial = {"epoch": epoch, "epoch_step": k, "seen": seen, "train_time_s": elapsed, "correct": correct.cpu(),
                        "sums": {name: v.cpu() for name, v in sums.items()}}
        save_checkpoint(self.state(), self.ckpt_dir)
        raise Preempted(f"{self._stop.name}: saved epoch {epoch + 1} step {k} of {n} to {self.ckpt_dir / 'last.pt'}; "
                        "run the same command again to continue", interrupted=self._stop.interrupted)

    def _should_stop(self) -> bool:
        """At an epoch end: did a stop signal arrive? Under DDP the ranks agree (one tiny all-reduce per epoch)."""
        stop = self._stop is not None and self._stop.received is not None
        if self.world_size > 1:
            flag = torch.tensor(float(stop), device=self.device)
            stop = distributed.all_reduce_sum(flag).item() > 0
        return stop

    def fit(self) -> dict:
        cfg, t = self.cfg, self.cfg.trainer
        resumed = self.try_resume()
        if not resumed and any(self.ckpt_dir.glob("*.pt")):
            raise ResumeError(f"{self.ckpt_dir} holds checkpoints that cannot be read; move them away to start over")
        # Written only now: the resume checks have passed, the folder is this run's. (Hydra writes nothing into it
        # itself: hydra.output_subdir is null, so a refused command leaves an existing run untouched.)
        self._write_run_files()
        cell = runid.cell_name(cfg.dataset.name, cfg.backbone.name, cfg.method.name)
        logger = RunLogger(self.out_dir, self.config_dict, name=f"{cell}/seed{cfg.seed}", group=cell,
                           resume_rows=self.history) if self.is_main else _NoLogger()
        status, exit_code = "running", 1
        self._stop = StopSignals().install()
        self._say(self.startup_line(resumed))
        notes = [busy_cpu_note(torch.get_num_threads()) if self.device.type == "cpu" else None,
                 None if not self.speed.bf16 or native_bf16(self.device) else
                 f"note: {self.environment['device_name']} has no native bf16 (AMX or AVX512-BF16 on a CPU), so "
                 "trainer.precision=bf16 is emulated here and slower than fp32; use trainer.precision=fp32"]
        for note in filter(None, notes):
            self._say(note)
        started, epochs_here = time.perf_counter(), 0
        try:
            self._write_summary(status)
            for epoch in range(self.epoch, t.epochs):
                row = self._run_epoch(epoch)
                self.history.append(row)
                if self.is_main:
                    save_checkpoint(self.state(), self.ckpt_dir)
                logger.log(row)
                epochs_here += 1
                wall = time.perf_counter() - started
                eta = wall / epochs_here * (t.epochs - epoch - 1)
                self._say(f"epoch {epoch + 1}/{t.epochs}  loss {row['train_loss']:.4f}  train acc "
                          f"{row['train_acc']:.2f}  test err {row['test_err']:.2f}  ({row['train_img_per_s']:.0f} img/s)"
                          f"  elapsed {_clock(wall)}  ETA {_clock(eta)}")
                if epoch + 1 < t.epochs:
                    self._write_summary(status)  # epochs done and best so far, readable while the run goes on
                if epoch + 1 < t.epochs and self._should_stop():  # the epoch's checkpoint is the position
                    raise Preempted(f"{self._stop.name}: stopped after epoch {epoch + 1} (saved to "
                                    f"{self.ckpt_dir / 'last.pt'}); run the same command again to continue",
                                    interrupted=self._stop.interrupted)
            status, exit_code = "completed", 0
        except FloatingPointError:
            status = "diverged"
            raise
        except Preempted as e:
            status = "stopped" if e.interrupted else "preempted"
            raise
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside a step: the last checkpoint stays as it was
            status = "stopped"
            raise
        finally:
            if status == "running":
                status = "failed"
            self._stop.restore()
            summary = self._write_summary(status)
            logger.summary(summary)
            logger.finish(exit_code)
            self.close()
            if status == "preempted":  # everything is saved: now the handler we displaced (submitit's requeue, say)
                self._stop.chain()
        return summary

    def _run_epoch(self, epoch: int) -> dict:
        """Train one epoch, evaluate, step the schedule and keep the best weights: the epoch's metrics row."""
        t = self.cfg.trainer
        lr = self.optimizer.param_groups[0]["lr"]
        train, terms = self.train_epoch(epoch)
        self._check_finite(f"in epoch {epoch + 1}", {"loss": train["train_loss"], **terms})
        start = time.perf_counter()
        test = evaluate(self.model, self.test_loader, t.limit_eval_batches, self.autocast)
        row = runfiles.MetricsRow(epoch=epoch + 1, lr=lr, **train, **test, eval_time_s=time.perf_counter() - start,
                                  terms=terms).to_dict()
        self._check_finite(f"by the end of epoch {epoch + 1}", {"test_nll": row["test_nll"]})  # NaN weights
        self.scheduler.step()
        self.epoch = epoch + 1
        self.time_offset += row["train_time_s"]
        if row["test_acc"] > self.best["test_acc"]:
            self.best = {"test_acc": row["test_acc"], "test_err": row["test_err"], "epoch": epoch + 1}
            if t.save_best and self.is_main:
                atomic_save({"model": self.model.state_dict(), "epoch": epoch + 1, "test_acc": row["test_acc"],
                             "config": self.config_dict}, self.ckpt_dir / "best.pt")
        return row

    def startup_line(self, resumed: bool) -> str:
        """One line: where the run writes, fresh or resumed, device and threads, data, backbone, method, run length
        and seed, and the speed settings in force."""
        cfg, env = self.cfg, self.environment
        if not resumed:
            where = "fresh run"
        elif self.partial is not None:
            where = f"resumed in epoch {self.partial['epoch'] + 1} at step {self.partial['epoch_step']}"
        else:
            where = f"resumed after epoch {self.epoch}/{cfg.trainer.epochs}"
        device = f"{self.device} ({env['device_name']}" + (
            f", {env['torch_threads']} CPU thread{'s' if env['torch_threads'] > 1 else ''})" if self.device.type == "cpu" else ")")
        method = ", ".join(f"{k}={v}" for k, v in self.config_dict["method"].items() if k != "name")
        return (f"{self.out_dir}: {where} | {device} | {cfg.dataset.name}: {self.train_size} train / {self.test_size} "
                f"test images, {self.num_classes} classes | {cfg.backbone.name} ({self.num_params / 1e6:.2f}M params) "
                f"| {cfg.method.name}" + (f" ({method})" if method else "") + f" | {cfg.trainer.epochs} epochs, seed "
                f"{cfg.seed} | speed: {self.speed.describe()}")

    def _say(self, line: str, to_stdout: bool = True) -> None:
        """A line for the person watching: stdout and the run's train.log (rank 0 only)."""
        if not self.is_main:
            return
        if to_stdout:
            print(line, flush=True)
        with open(self.out_dir / runfiles.LOG, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    def _write_run_files(self) -> None:
        """The files that describe the run (dlb/run/folder.py), written once its checks have passed."""
        if not self.is_main:
            return
        from omegaconf import OmegaConf

        runfiles.write_json(self.out_dir / runfiles.ENVIRONMENT, self.environment)
        runfiles.write_json(self.out_dir / runfiles.CONFIG, {**self.config_dict, "method_info": self.method.info()})
        hydra_dir = self.out_dir / ".hydra"
        hydra_dir.mkdir(exist_ok=True)
        OmegaConf.save(self.cfg, hydra_dir / "config.yaml")
        if self.overrides is not None:
            OmegaConf.save(OmegaConf.create(list(self.overrides)), hydra_dir / "overrides.yaml")
        if self.noise_record is not None:
            atomic_save(self.noise_record, self.out_dir / "noisy_labels.pt")

    def close(self) -> None:
        """Release what the run holds: its GPU slot, the process group it created. Idempotent."""
        if self.slot is not None:
            self.slot.close()
        if self._own_group and distributed.dist.is_initialized():
            distributed.dist.destroy_process_group()
            self._own_group = False

    def _write_summary(self, status: str) -> dict:
        cfg, last = self.cfg, (self.history[-1] if self.history else {})
        summary = runfiles.Summary(
            status=status, cell=runid.cell_name(cfg.dataset.name, cfg.backbone.name, cfg.method.name),
            dataset=cfg.dataset.name, backbone=cfg.backbone.name, method=cfg.method.name, seed=cfg.seed,
            epochs=cfg.trainer.epochs, epochs_completed=self.epoch, steps=self.step,
            best_test_acc=self.best.get("test_acc") if self.history else None,
            best_test_err=self.best.get("test_err"), best_epoch=self.best.get("epoch"),
            **{f"last_{k}": last.get(k) for k in ("test_acc", "test_err", "test_nll", "test_ece")},
            train_time_s=self.time_offset, peak_memory_bytes=peak_memory_bytes(self.device),
            num_params=self.num_params, train_size=self.train_size, num_classes=self.num_classes,
            data=self.data_fingerprint, augment=cfg.augment.name, noise=cfg.noise.name, noise_rate=cfg.noise.rate,
            noise_seed=cfg.noise.seed, noise_rate_realised=self.noise_rate_realised, method_info=self.method.info(),
            world_size=self.world_size, global_batch=self.world_size * cfg.trainer.batch_size, device=str(self.device),
            environment=self.environment,
        ).to_dict()
        if self.is_main:
            runfiles.write_json(self.out_dir / runfiles.SUMMARY, summary)
        return summary


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def run(cfg: DictConfig, out_dir: str | Path, overrides: list[str] | None = None) -> dict:
    with RunLock(out_dir):  # first of all: a second process aimed at this folder stops here, before touching it
        return Trainer(cfg, out_dir, overrides=overrides).fit()
