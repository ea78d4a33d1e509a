"""Where a run executes: the torch device, a GPU slot shared by concurrent runs, and the CPU thread count."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import torch

from dlb.errors import ConfigError
from dlb.run.checkpoint import locked


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "slot":
        raise ConfigError("trainer.device=slot: acquire it with GpuSlot (the trainer does), it is not a torch device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r}: CUDA is not available on this machine; use trainer.device=cpu")
    if name.startswith("cuda:") and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"trainer.device={name!r}: this machine has {torch.cuda.device_count()} visible GPU(s)")
    return torch.device(name)


def set_threads(requested: int | None, jobs: int | None = None) -> int:
    """Apply and return torch's CPU thread count: `requested`, else $OMP_NUM_THREADS, else usable cores / `jobs`."""
    if requested is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if env.isdigit() and int(env) > 0:
            requested = int(env)
        else:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            requested = cores // max(1, jobs or 1)
    threads = max(1, int(requested))
    torch.set_num_threads(threads)
    return threads


def busy_cpu_note(threads: int) -> str | None:
    """A hint when other processes keep this process's cores busy; None when they are free or the load is unknown."""
    try:
        load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if load + threads <= cores + 0.5:
        return None
    return (f"note: the CPU is busy (load {load:.1f} on {cores} cores) and this run uses {threads} thread"
            f"{'s' if threads > 1 else ''}; if it crawls, give it fewer with trainer.threads=<n> (docs/performance.md)")


class GpuSlot(contextlib.AbstractContextManager):
    """trainer.device=slot: a slot file ($DLB_SLOT_DIR/gpu<g>-<j>.lock) locked for the life of the run, so runs launched
    at once spread over the visible GPUs (docs/performance.md, "Many runs per GPU: slots"); `device` is cuda:<g>."""

    def __init__(self, jobs_per_gpu: int = 1, slot_dir: str | Path | None = None, timeout_s: float | None = None,
                 poll_s: float = 2.0):
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            raise ConfigError("trainer.device=slot: no CUDA GPU on this machine; use trainer.device=cpu (or auto)")
        self.dir = Path(slot_dir or os.environ.get("DLB_SLOT_DIR") or "/tmp/dlb-gpu-slots")
        self.dir.mkdir(parents=True, exist_ok=True)
        gpus, start, told = torch.cuda.device_count(), time.monotonic(), False
        while True:
            for j in range(jobs_per_gpu):
                for g in range(gpus):
                    self.file = locked(self.dir / f"gpu{g}-{j}.lock", f"pid {os.getpid()}")
                    if self.file is not None:
                        self.gpu, self.job, self.device = g, j, torch.device(f"cuda:{g}")
                        return
            if timeout_s is not None and time.monotonic() - start >= timeout_s:
                raise RuntimeError(f"trainer.device=slot: all {gpus} x {jobs_per_gpu} GPU slots in {self.dir} "
                                   "are taken")
            if not told:
                print(f"dlb: all {gpus} x {jobs_per_gpu} GPU slots in {self.dir} are taken; waiting for one",
                      file=sys.stderr, flush=True)
                told = True
            time.sleep(poll_s)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()  # closing the descriptor releases the flock
            self.file = None

    def __exit__(self, *exc):
        self.close()
