"""Run bookkeeping: device choice, seeding, and the code/environment facts every run records."""
from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlb.choice import Choice
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
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
KEEP_HEAP = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 256 << 20))


def keep_heap() -> bool:
    """trainer.keep_heap: make glibc's malloc keep the memory a training step frees for the next step. By default it
    hands freed heap back to the OS and the next step's activations fault it in again as zeroed pages: 15,000-18,000
    page faults per resnet32 DLB step on a 2-core CPU, ~5 % of its time (results/bench/cpu_resnet32_b64_keep_heap.md).
    Process-wide, numerics unchanged; the process keeps its peak heap. False where the C library has no mallopt
    (macOS, musl)."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(key, value) == 1 for key, value in KEEP_HEAP)


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


def build_optimizer(o, params, fused: bool) -> torch.optim.SGD:
    """SGD of the official recipe. fused (Speed.fused: optim.fused resolved for the device): torch's fused kernel
    (one kernel for all parameters; CUDA and CPU have one in torch 2.14; on CPU its weights equal the loop's up to a
    rare 1-ulp rounding: tests/test_perf.py; torch raises where it has none), else the plain per-parameter loop
    (torch's reference, what the official code runs on CPU)."""
    kind = dict(fused=True) if fused else dict(foreach=False, fused=False)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay,
                           **kind)


# trainer.compile: torch.compile's modes, none (eager), and auto (resolve_speed picks one for the device).
CompileMode = Choice("CompileMode", [(m, m) for m in ("auto", "none", "default", "reduce-overhead", "max-autotune")])

# trainer.compile=auto on CPU compiles only runs of at least this many optimizer steps. Measured on a 2-core Xeon
# (results/bench/cpu_resnet32_b64_compile_cost.md): a cold compile of resnet32 costs about 29 s (CE and DLB) and
# saves 0.004 s (CE) / 0.038 s (DLB) per step, repaid after about 6,100 / 760 steps. Tests, debug runs and the demo
# stay below it (eager).
CPU_COMPILE_MIN_STEPS = 10_000
# trainer.eval_batch_size=auto: on CPU, batches that stay in cache (results/bench/cpu_eval_batch.md: 128 evaluates
# resnet8/resnet32 about 2x faster than 1000); on CUDA, large batches keep the GPU busy.
EVAL_BATCH = {"cpu": 128, "cuda": 1000}


@dataclass(frozen=True)
class Speed:
    """The speed settings a run uses, resolved once at start from trainer.*/optim.fused and the device."""
    channels_last: bool
    fused: bool
    compile: str  # a CompileMode other than auto
    bf16: bool = False
    faithful: bool = False
    eval_batch_size: int = EVAL_BATCH["cuda"]
    keep_heap: bool = False

    def describe(self) -> str:
        heap = ", heap kept" if self.keep_heap else ""
        if self.faithful:
            return f"faithful (fp32, eager, contiguous, plain SGD), eval batch {self.eval_batch_size}{heap}"
        return ", ".join(["bf16 autocast" if self.bf16 else "fp32",
                          "channels_last" if self.channels_last else "contiguous",
                          "fused SGD" if self.fused else "plain SGD",
                          "eager" if self.compile == "none" else f"compile {self.compile}",
                          f"eval batch {self.eval_batch_size}"]) + heap


def resolve_speed(t, o, device: torch.device, steps: int, split_backward: bool = False) -> Speed:
    """trainer.faithful/channels_last/compile/precision/keep_heap and optim.fused for this device; `steps`: the run's
    optimizer steps. auto: on CPU what the repo's benchmark measured faster (results/bench/cpu_resnet32_b64_speed.md:
    channels_last, fused SGD, compile default once the run is long enough to repay compiling, the kept heap); on CUDA
    what its structure predicts, not yet measured (channels_last, fused, CUDA graphs, or compile default with DLB's
    split backward, which CUDA graphs would break). faithful: the official code's numerics (config.validate refuses an
    explicit conflicting switch)."""
    cuda = device.type == "cuda"
    eval_batch = t.eval_batch_size if t.eval_batch_size != "auto" else EVAL_BATCH["cuda" if cuda else "cpu"]
    # (the heap and the evaluation batch change no number: faithful keeps them; eval rounding aside)
    heap = device.type == "cpu" if t.get("keep_heap", "auto") == "auto" else bool(t.keep_heap)
    if t.get("faithful"):
        return Speed(channels_last=False, fused=False, compile="none", faithful=True, eval_batch_size=eval_batch,
                     keep_heap=heap)
    channels_last = (cuda or device.type == "cpu") if t.channels_last == "auto" else bool(t.channels_last)
    fused = (cuda or device.type == "cpu") if o.fused == "auto" else bool(o.fused)
    compile = str(t.compile)
    if compile == "auto":
        if cuda:
            compile = "default" if split_backward else "reduce-overhead"
        else:
            compile = "default" if device.type == "cpu" and steps >= CPU_COMPILE_MIN_STEPS else "none"
    return Speed(channels_last=channels_last, fused=fused, compile=compile, bf16=t.precision == "bf16",
                 eval_batch_size=eval_batch, keep_heap=heap)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix maths runs in hardware here: a CUDA GPU that supports it, or a CPU with AMX or
    AVX512-BF16 (oneDNN's test). Elsewhere bf16 autocast is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Precision(Choice):
    """trainer.precision: fp32 (the official numerics) or bf16 autocast of the forwards (CUDA, or a CPU with native
    bf16: dlb.utils.native_bf16); losses and metrics are computed from fp32 logits either way."""
    fp32 = "fp32"
    bf16 = "bf16"


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """trainer.compile: torch.compile of the model (never of a method's step, so DLB's two forwards stay two separate
    calls, each with its own BatchNorm statistics). dynamic=False: one static graph per batch shape, i.e. the full
    batch and, once per run, the epoch's partial last batch (kept, as in the official code); no dynamic-shape
    kernels. reduce-overhead replays CUDA graphs, whose output buffers are reused by the next replay: DLB keeps
    last step's logits, so outputs are copied out (B x K floats per call)."""
    if mode == "none":
        return model
    net = torch.compile(model, mode=None if mode == "default" else str(mode), dynamic=False)
    if mode == "reduce-overhead":
        net.register_forward_hook(lambda module, args, out: out.clone())
    return net


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def git_info() -> dict:
    """Commit and dirty flag (tracked files changed, results/ aside) of the code that runs, from the package's own
    checkout. A copy without .git (rsynced to a cluster, sent to a GPU machine) takes the commit from
    $DLB_GIT_COMMIT, else 'unknown'."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        # dirty = the code differs from the commit; results/ holds outputs (benchmark tables), not code
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    if not commit and os.environ.get("DLB_GIT_COMMIT"):
        return {"git_commit": os.environ["DLB_GIT_COMMIT"], "git_dirty": None}  # None: not checkable without .git
    return {"git_commit": commit or "unknown", "git_dirty": dirty}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform knows (often only "x86_64")."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment_info(device: torch.device) -> dict:
    import hydra
    import timm
    import torchvision

    info = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__, "hydra": hydra.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    else:
        info["device_name"] = cpu_model()
    return info


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def saved_for_backward_bytes(step, exclude=()) -> dict:
    """Run `step()` and measure the tensors autograd saves for backward (saved-tensor hooks; the storages of
    `exclude`, e.g. the parameters, not counted; each storage once): `total` = all saved during the step, `peak` =
    the most held at one moment (a storage counts until the last graph node saving it is freed, e.g. by a backward).
    Device-agnostic, so CPU runs can compare methods' activation memory; eager mode only (compiled graphs save
    their own tensors)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    live: dict[int, list[int]] = {}  # storage pointer -> [bytes, saved references still held]
    held = {"now": 0, "peak": 0, "total": 0}

    class Saved:
        __slots__ = ("tensor", "ptr")

        def __init__(self, tensor, ptr):
            self.tensor, self.ptr = tensor, ptr

        def __del__(self):
            entry = live[self.ptr]
            entry[1] -= 1
            if entry[1] == 0:
                held["now"] -= entry[0]
                del live[self.ptr]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr in skip or ptr == 0:
            return t
        if ptr not in live:
            live[ptr] = [t.untyped_storage().nbytes(), 0]
            held["now"] += live[ptr][0]
            held["total"] += live[ptr][0]
            held["peak"] = max(held["peak"], held["now"])
        live[ptr][1] += 1
        return Saved(t, ptr)

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s.tensor if isinstance(s, Saved) else s):
        step()
    return {"total": held["total"], "peak": held["peak"]}
