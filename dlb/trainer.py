"""The method-agnostic training loop: resume, train, evaluate, checkpoint and log a run (dlb.build.Run) into its
output folder, which holds everything needed to reproduce and audit it (dlb/run/folder.py lists the files)."""
from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from dlb.build import Run
from dlb.config import to_container
from dlb.data.datasets import ArrayDataset
from dlb.device import distributed
from dlb.device.placement import busy_cpu_note
from dlb.device.speed import native_bf16
from dlb.errors import Diverged, Preempted, ResumeError
from dlb import metrics
from dlb.metrics import evaluate
from dlb.run import folder as runfiles
from dlb.run import identity as runid
from dlb.run.checkpoint import StopSignals
from dlb.run.command import resume_command
from dlb.run.loggers import RunLogger
from dlb.run.record import peak_memory_bytes, rng_states, set_rng_states


# A NaN/Inf loss shows in the on-device loss sums, read every this many steps and at epoch end (not a sync per step)
FINITE_CHECK_EVERY = 50
PROGRESS_EVERY_S = 120.0  # a progress line inside long epochs (train.log; stdout when it is not a terminal)


class Trainer:
    """Trains a built Run (dlb.build); its parts read as the trainer's own (trainer.model, trainer.device, ...)."""

    def __init__(self, run: Run | DictConfig, out_dir: str | Path | None = None,
                 data: tuple[ArrayDataset, ArrayDataset] | None = None, overrides: list[str] | None = None):
        """A built Run, or a config to build one from (dlb.build.Run says what `data` and `overrides` are)."""
        self.run = run if isinstance(run, Run) else Run(run, out_dir, data, overrides)
        self.epoch, self.step = 0, 0  # epochs completed, optimizer steps taken
        self.history: list[dict] = []
        self.best = {"test_acc": -1.0}
        self.time_offset = 0.0  # training time of earlier processes of this run (resumed)
        self.partial: dict | None = None  # the position inside an epoch that a stop signal saved
        self._stop = StopSignals()  # installed by fit

    def __getattr__(self, name: str):
        if name == "run":  # (not yet set: __init__ failed)
            raise AttributeError(name)
        return getattr(self.run, name)

    # --- checkpoints -------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "method": self.method.method_state(), "rng": rng_states(), "history": self.history,
                "best": self.best, "train_time_s": self.time_offset, "config": self.config_dict,
                "data": self.data_fingerprint, "world_size": self.world_size, "partial": self.partial}

    def try_resume(self) -> bool:
        state = self.folder.load_checkpoint()
        if state is None:
            return False
        check_resumable(self.run, state)
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
        if self.is_main:  # only now: a refused command leaves the folder as it was
            self.folder.set_aside_unreadable_last()
        return True

    # --- the loop ------------------------------------------------------------------------------------------
    def train_step(self, batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step: (logits, loss, named loss terms), still on the device. Gradients are zeroed before the
        method's step: a method may backpropagate part of its loss itself (DLB's method.backward=split)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.step < self.warmup_steps:
            # optim.warmup_epochs as Tf-KD's WarmUpLR: warm-up step k of K runs at k/K of the epoch's lr (from the
            # step count: exact after a resume)
            k, scheduled = self.step + 1, self.scheduler.get_last_lr()[0]
            for group in self.optimizer.param_groups:
                group["lr"] = scheduled * k / self.warmup_steps if k < self.warmup_steps else scheduled
        with self.autocast() if self.autocast else contextlib.nullcontext():
            logits, losses = self.method.training_step(self.net, batch)
        loss = sum(losses.values())
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return logits, loss, losses

    def train_epoch(self, epoch: int) -> tuple[dict, dict]:
        """One epoch of training: (train_loss/acc, time and image counts; the means of the method's terms, by name)."""
        t = self.cfg.trainer
        self.model.train()
        self.method.train()
        self.method.on_epoch_start(epoch, t.epochs)
        self.train_loader.set_epoch(epoch)
        n_batches = min(len(self.train_loader), t.limit_train_batches or math.inf)
        # Sums stay on the device; they are read at the end of the epoch and every FINITE_CHECK_EVERY steps.
        sums: dict[str, torch.Tensor] = {}
        zero = torch.zeros((), device=self.device)
        correct, seen = zero.clone(), 0
        first, time_before = 0, 0.0  # resumed mid-epoch: the saved step, sums and training time of this epoch
        if self.partial is not None and self.partial["epoch"] == epoch:
            p, self.partial = self.partial, None
            first, time_before, seen = p["epoch_step"], p["train_time_s"], p["seen"]
            sums, correct = {k: v.to(self.device) for k, v in p["sums"].items()}, p["correct"].to(self.device)
        progress = t.progress if t.progress is not None else sys.stderr.isatty()
        batches = self.train_loader if first == 0 else self.train_loader.iter_from(first)
        if progress:
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
            if (i + 1) % FINITE_CHECK_EVERY == 0 or (self._stop.received is not None and self.world_size == 1):
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

    def _step_boundary(self, epoch: int, k: int, n: int, sums: dict, correct, seen: int, elapsed: float) -> None:
        """After step k (1-based) of n: catch a NaN/Inf loss, then on a stop signal save the position inside the epoch
        (the device loader's batches are a pure function of (seed, epoch, step): iter_from continues it) and stop."""
        stacked = torch.stack(list(sums.values()))
        if self.world_size > 1:  # DDP: a NaN on any rank stops every rank, or the others would wait for it forever
            distributed.all_reduce_sum(stacked)
        means = [v / (seen * self.world_size) for v in stacked.tolist()]  # one host sync
        check_finite(f"in epoch {epoch + 1} by step {k} of {n}", dict(zip(sums, means)))
        stop = self._stop
        if stop.received is None or self.world_size > 1:
            return  # DDP: the ranks agree on stopping at the epoch end (fit)
        if self.cfg.dataset.loader != "device":
            raise Preempted(f"{stop.name}: stopped in epoch {epoch + 1} at step {k}; dataset.loader="
                            f"{self.cfg.dataset.loader} cannot resume mid-epoch, so epoch {epoch + 1} restarts from "
                            "the last checkpoint when the same command runs again", interrupted=stop.interrupted)
        self.partial = {"epoch": epoch, "epoch_step": k, "seen": seen, "train_time_s": elapsed,
                        "correct": correct.cpu(), "sums": {name: v.cpu() for name, v in sums.items()}}
        self.folder.save_checkpoint(self.state())
        raise Preempted(f"{stop.name}: saved epoch {epoch + 1} step {k} of {n} to {self.folder.last}; "
                        "run the same command again to continue", interrupted=stop.interrupted)

    def fit(self) -> dict:
        cfg, t = self.cfg, self.cfg.trainer
        resumed = self.try_resume()
        if not resumed and self.folder.has_checkpoints():
            raise ResumeError(f"{self.folder.checkpoints} holds checkpoints that cannot be read; move them away to "
                              "start over")
        # Written only now: the resume checks have passed, the folder is this run's. (Hydra writes nothing into it
        # itself: hydra.output_subdir is null, so a refused command leaves an existing run untouched.)
        if self.is_main:
            self.folder.write_run_files(environment=self.environment, cfg=cfg, overrides=self.overrides,
                                        config={**self.config_dict, "method_info": self.method.info()},
                                        noise_record=self.noise_record)
        cell = runid.cell_name(cfg.dataset.name, cfg.backbone.name, cfg.method.name)
        # (DDP: rank 0 logs the rows, reduced over all ranks)
        logger = RunLogger(self.folder, self.config_dict, name=f"{cell}/seed{cfg.seed}", group=cell,
                           resume_rows=self.history) if self.is_main else None
        status = "running"
        self._stop = StopSignals().install()
        for line in startup_lines(self, resumed):
            self._say(line)
        started, first_epoch = time.perf_counter(), self.epoch
        try:
            write_summary(self, status)
            for epoch in range(self.epoch, t.epochs):
                row = self._run_epoch(epoch)
                self.history.append(row)
                if logger:
                    self.folder.save_checkpoint(self.state())
                    logger.log(row)
                wall = time.perf_counter() - started
                eta = wall / (epoch + 1 - first_epoch) * (t.epochs - row["epoch"])
                self._say(f"epoch {row['epoch']}/{t.epochs}  loss {row['train_loss']:.4f}  train acc "
                          f"{row['train_acc']:.2f}  test err {row['test_err']:.2f}  ({row['train_img_per_s']:.0f} "
                          f"img/s)  elapsed {_clock(wall)}  ETA {_clock(eta)}")
                if epoch + 1 < t.epochs:
                    write_summary(self, status)  # epochs done and best so far, readable while the run goes on
                    stop = self._stop.received is not None
                    if self.world_size > 1:  # the ranks agree (one tiny all-reduce per epoch)
                        stop = distributed.all_reduce_sum(torch.tensor(float(stop), device=self.device)).item() > 0
                    if stop:  # the epoch's checkpoint is the position
                        raise Preempted(f"{self._stop.name}: stopped after epoch {epoch + 1} (saved to "
                                        f"{self.folder.last}); run the same command again to continue",
                                        interrupted=self._stop.interrupted)
            status = "completed"
        except FloatingPointError:
            status = "diverged"
            raise
        except (Preempted, KeyboardInterrupt) as e:  # KeyboardInterrupt: a second Ctrl-C; the last checkpoint stays
            status = "preempted" if isinstance(e, Preempted) and not e.interrupted else "stopped"
            what = str(e) if isinstance(e, Preempted) else (f"Ctrl-C: stopped at once in epoch {self.epoch + 1} (step "
                                                             f"{self.step}); it continues from the last checkpoint")
            how = resume_command(self.out_dir, self.overrides) if self.overrides is not None else "the same command"
            self._say(f"stopped: {what}; continue with: {how}", to_stdout=False)
            raise
        finally:
            if status == "running":
                status = "failed"
            self._stop.restore()
            summary = write_summary(self, status)
            if logger:
                logger.finish(summary, exit_code=0 if status == "completed" else 1)
            self.run.close()
            if status == "preempted":  # everything is saved: now the handler we displaced (submitit's requeue, say)
                self._stop.chain()
        return summary

    def _run_epoch(self, epoch: int) -> dict:
        """Train one epoch, evaluate, step the schedule and keep the best weights: the epoch's metrics row."""
        t = self.cfg.trainer
        lr = self.optimizer.param_groups[0]["lr"]
        train, terms = self.train_epoch(epoch)
        check_finite(f"in epoch {epoch + 1}", {"loss": train["train_loss"], **terms})
        start = time.perf_counter()
        test = evaluate(self.model, self.test_loader, t.limit_eval_batches, self.autocast)
        row = {"epoch": epoch + 1, "lr": lr, **train, **test, "eval_time_s": time.perf_counter() - start,
               **{f"train_{k}": v for k, v in terms.items()}}  # metrics.jsonl's row (dlb/run/folder.py)
        check_finite(f"by the end of epoch {epoch + 1}", {"test_nll": row["test_nll"]})  # NaN weights
        self.scheduler.step()
        self.epoch = epoch + 1
        self.time_offset += row["train_time_s"]
        if row["test_acc"] > self.best["test_acc"]:
            self.best = {"test_acc": row["test_acc"], "test_err": row["test_err"], "epoch": epoch + 1}
            if t.save_best and self.is_main:
                self.folder.save_best({"model": self.model.state_dict(), "epoch": epoch + 1,
                                       "test_acc": row["test_acc"], "config": self.config_dict})
        return row

    def _say(self, line: str, to_stdout: bool = True) -> None:
        """A line for the person watching: stdout and the run's train.log (rank 0 only)."""
        if self.is_main:
            if to_stdout:
                print(line, flush=True)
            self.folder.add_log_line(line)


def check_resumable(run: Run, state: dict) -> None:
    """Raise ResumeError unless this run may continue checkpoint `state`: resume=true, same data, identity, ranks."""
    if not run.cfg.resume:
        raise ResumeError(f"{run.out_dir} already holds a run (epoch {state['epoch']}); pass resume=true to "
                          "continue it, or pick another output dir with hydra.run.dir=<dir>")
    if data_diffs := runid.data_differences(state.get("data"), run.data_fingerprint):
        raise ResumeError(f"{run.out_dir} holds a run trained on other data ({'; '.join(data_diffs)}); its "
                          "results belong to that data: give this data its own output dir (hydra.run.dir=<dir>), "
                          "or point dataset.root back at the data that run used")
    if diffs := runid.differences(state.get("config", {}), run.config_dict):
        raise ResumeError(f"{run.out_dir} holds a run with a different config ({'; '.join(diffs)}); "
                          "use another output dir (hydra.run.dir=<dir>) for this one")
    if state.get("world_size", 1) != run.world_size:  # DDP: the global batch is world_size x batch_size
        raise ResumeError(f"{run.out_dir} holds a run trained by {state.get('world_size', 1)} process(es); "
                          f"resume it with as many (this is {run.world_size}), or use another output dir")


def startup_lines(tr: Trainer, resumed: bool) -> list[str]:
    """The start-up lines: what and where the run is, the command that continues it, warnings (busy CPU, bf16)."""
    cfg, env, p = tr.cfg, tr.environment, tr.partial
    where = ("fresh run" if not resumed else f"resumed after epoch {tr.epoch}/{cfg.trainer.epochs}" if p is None
             else f"resumed in epoch {p['epoch'] + 1} at step {p['epoch_step']}")
    threads = env["torch_threads"]
    device = f"{tr.device} ({env['device_name']}" + (
        f", {threads} CPU thread{'s' if threads > 1 else ''})" if tr.device.type == "cpu" else ")")
    method = ", ".join(f"{k}={v}" for k, v in tr.config_dict["method"].items() if k != "name")
    lines = [f"{tr.out_dir}: {where} | {device} | {cfg.dataset.name}: {tr.train_size} train / "
             f"{tr.test_size} test images, {tr.num_classes} classes | {cfg.backbone.name} "
             f"({tr.num_params / 1e6:.2f}M params) | {cfg.method.name}" + (f" ({method})" if method else "") +
             f" | {cfg.trainer.epochs} epochs, seed {cfg.seed} | speed: {tr.speed.describe()}",
             None if tr.overrides is None else
             f"to continue this run after a stop: {resume_command(tr.out_dir, tr.overrides)}",
             busy_cpu_note(torch.get_num_threads()) if tr.device.type == "cpu" else None,
             None if not tr.speed.bf16 or native_bf16(tr.device) else
             f"note: {env['device_name']} has no native bf16 (AMX or AVX512-BF16 on a CPU), so "
             "trainer.precision=bf16 is emulated here and slower than fp32; use trainer.precision=fp32"]
    return [line for line in lines if line]


def write_summary(tr: Trainer, status: str) -> dict:
    """Write (rank 0) and return summary.json of the run so far: its status, results and what it ran on."""
    cfg, last = tr.cfg, (tr.history[-1] if tr.history else {})
    summary = runfiles.Summary(
        status=status, cell=runid.cell_name(cfg.dataset.name, cfg.backbone.name, cfg.method.name),
        dataset=cfg.dataset.name, backbone=cfg.backbone.name, method=cfg.method.name, seed=cfg.seed,
        epochs=cfg.trainer.epochs, epochs_completed=tr.epoch, steps=tr.step,
        best_test_acc=tr.best.get("test_acc") if tr.history else None,
        best_test_err=tr.best.get("test_err"), best_epoch=tr.best.get("epoch"),
        last_test={m.name: last.get(f"test_{m.name}") for m in metrics.METRICS},
        train_time_s=tr.time_offset, peak_memory_bytes=peak_memory_bytes(tr.device),
        num_params=tr.num_params, train_size=tr.train_size, num_classes=tr.num_classes,
        data=tr.data_fingerprint, augment=cfg.augment.name, noise=cfg.noise.name, noise_rate=cfg.noise.rate,
        noise_seed=cfg.noise.seed, noise_rate_realised=tr.noise_rate_realised, method_info=tr.method.info(),
        world_size=tr.world_size, global_batch=tr.world_size * cfg.trainer.batch_size, device=str(tr.device),
        environment=tr.environment,
    ).to_dict()
    if tr.is_main:
        runfiles.write_json(tr.folder.summary, summary)
    return summary


def check_finite(where: str, terms: dict[str, float]) -> None:
    if not all(math.isfinite(v) for v in terms.values()):
        raise Diverged(f"training diverged {where} ({', '.join(f'{k}={v:.4g}' for k, v in terms.items())}); "
                       "the last good checkpoint is kept: lower optim.lr (or the method's loss weights) and start "
                       "over in another output dir (hydra.run.dir=<dir>)")


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def run(cfg: DictConfig, out_dir: str | Path, overrides: list[str] | None = None) -> dict:
    folder = runfiles.RunFolder(out_dir)
    done = folder.completed(to_container(cfg)) if cfg.resume else None
    if done is not None:  # one line, and not a file touched (not even the lock's)
        err = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else "?"  # noqa: E731  (folders of older versions)
        print(f"{folder}: already complete, nothing to do | {done.get('epochs_completed')} epochs | test err: last "
              f"{err(done.get('last_test_err'))}, best {err(done.get('best_test_err'))} (epoch "
              f"{done.get('best_epoch')})", flush=True)
        return done
    # Then: a second process aimed at this folder stops here, before touching it.
    with folder.lock():
        return Trainer(cfg, out_dir, overrides=overrides).fit()
