"""What a run records to be reproducible: seeds and RNG states, code version, environment, and its peak memory."""
from __future__ import annotations

import os
import platform
import random
import resource
import subprocess
import sys

import hydra
import numpy as np
import timm
import torch
import torchvision

from dlb import REPO


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = not deterministic


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
    """Commit and dirty flag (tracked files changed, results/ aside) of the package's own checkout; a copy without
    .git takes the commit from $DLB_GIT_COMMIT, else 'unknown'."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()

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
    """CUDA: the most memory torch allocated on the device; CPU: the process's peak RSS (summary.json's field)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
