"""Where a run executes: the torch device, a GPU slot shared by concurrent runs, and the CPU thread count."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from dlb.errors import ConfigError


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
    """Pick and apply torch's CPU thread count; returns it. torch's default (one thread per core) oversubscribes a
    machine shared with other processes, and the training loop then runs 10-40x slower. In order: `requested`,
    else $OMP_NUM_THREADS, else the cores this process may use divided by `jobs` (runs sharing this machine).
    Always at least 1."""
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


# glibc's mallopt parameters (malloc.h) and the values keep_heap sets: keep up to 1 GiB of freed heap and grow it
# 256 MiB at a time; blocks above 32 MiB (glibc's largest mmap threshold) are still mapped and unmapped one by one.

def busy_cpu_note(threads: int) -> str | None:
    """A hint when other processes already keep this process's cores busy: `threads` more threads then make every
    step wait (10-40x slower on a 2-core machine). None when the cores are free or the load can't be read."""
    try:
        load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if load + threads <= cores + 0.5:
        return None
    return (f"note: the CPU is busy (load {load:.1f} on {cores} cores) and this run uses {threads} thread"
            f"{'s' if threads > 1 else ''}; if it crawls, give it fewer with trainer.threads=<n> (docs/performance.md)")


SLOT_DIR_ENV = "DLB_SLOT_DIR"
DEFAULT_SLOT_DIR = "/tmp/dlb-gpu-slots"


class GpuSlot:
    """trainer.device=slot: an exclusive flock on one of num_gpus x jobs_per_gpu slot files
    ($DLB_SLOT_DIR/gpu<g>-<j>.lock), held for the life of the run; `device` is cuda:<g>.

    Several runs launched at once (launcher=gpus, joblib workers) spread over the GPUs without knowing about
    each other. The kernel drops a flock when its process dies, so a crashed run never leaves a slot taken.
    Slots fill breadth-first (job 0 on every GPU before job 1 on any), so a half-full sweep uses every GPU.
    GPU indices are the ones this process sees (CUDA_VISIBLE_DEVICES): jobs sharing a slot dir must see the same
    GPUs. With every slot taken, the constructor waits (polling) until one frees, or raises after timeout_s."""

    def __init__(self, jobs_per_gpu: int = 1, slot_dir: str | Path | None = None, timeout_s: float | None = None,
                 poll_s: float = 2.0):
        import fcntl
        import time

        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            raise ConfigError("trainer.device=slot: no CUDA GPU on this machine; use trainer.device=cpu (or auto)")
        self.dir = Path(slot_dir or os.environ.get(SLOT_DIR_ENV) or DEFAULT_SLOT_DIR)
        self.dir.mkdir(parents=True, exist_ok=True)
        gpus, start, told = torch.cuda.device_count(), time.monotonic(), False
        while True:
            for j in range(jobs_per_gpu):
                for g in range(gpus):
                    f = open(self.dir / f"gpu{g}-{j}.lock", "a+")
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        f.close()
                        continue
                    f.truncate(0)
                    f.write(f"pid {os.getpid()}\n")  # for people looking at the slot dir; the lock is the flock
                    f.flush()
                    self.file, self.gpu, self.job = f, g, j
                    self.device = torch.device(f"cuda:{g}")
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


