#!/usr/bin/env python
"""`make demo`: CE vs DLB on Fashion-MNIST with a small CIFAR ResNet, then a table of test error.

Gets the data itself where it can (already on disk; torchvision's download with internet; Debian's
dataset-fashion-mnist package when running as root), otherwise prints the one command to run.
Extra arguments are passed to every training run as Hydra overrides, e.g. `scripts/demo.py seed=1` (`make demo
ARGS="seed=1"`); each command's runs go to outputs/demo/<method>/<its overrides>/.

Where the run's device does bf16 maths in hardware (a CPU with AMX or AVX512-BF16, a GPU), the demo trains under
bf16 autocast (trainer.precision=bf16): 2 min 41 s instead of 4 min 14 s on a 2-core AMX CPU, with test errors
within a seed's noise of fp32 (docs/performance.md). `scripts/demo.py trainer.precision=fp32` runs the official
numerics.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dlb.run.folder import CONFIG, Summary  # noqa: E402
from dlb.data.datasets import load_dataset  # noqa: E402
from dlb.errors import ConfigError, DatasetError  # noqa: E402
from dlb.device.speed import native_bf16  # noqa: E402
from dlb.device.placement import resolve_device  # noqa: E402

METHODS = ("ce", "dlb")


def have_data(root: str) -> bool:
    try:
        load_dataset("fashion_mnist", root, train=False)
        return True
    except DatasetError:
        return False


def ensure_data(root: str) -> None:
    if have_data(root):
        return
    print("demo: Fashion-MNIST not found; trying torchvision's download ...", flush=True)
    try:
        load_dataset("fashion_mnist", root, train=True, download=True)
        load_dataset("fashion_mnist", root, train=False, download=True)
        return
    except DatasetError as e:
        print(f"demo: download failed ({e})", flush=True)
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("demo: installing Debian's dataset-fashion-mnist package ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=False)
        if not have_data(root):
            subprocess.run(["apt-get", "update", "-qq"], check=False)
            subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=False)
        if have_data(root):
            return
    sys.exit("demo: no Fashion-MNIST data. Run `sudo apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu), "
             "or `python -m dlb.train experiment=fashion_demo dataset.download=true` on a machine with internet.")


def precision(overrides: list[str]) -> list[str]:
    """["trainer.precision=bf16"] where the device the runs will use (trainer.device, default auto) has native bf16
    and the overrides leave trainer.precision alone; else []."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    if "trainer.precision" in keys:
        return []
    device = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "trainer.device"), "auto")
    try:
        return ["trainer.precision=bf16"] if native_bf16(resolve_device(device)) else []
    except ConfigError:  # (a bad trainer.device: the trainer's own check says what is wrong)
        return []


def run_dir(method: str, overrides: list[str]) -> str:
    """outputs/demo/<method>/<the overrides>, e.g. outputs/demo/dlb/trainer.precision=bf16,seed=1 (outputs/demo/
    <method>/seed0 without any; the precision the demo picks counts, so bf16 and fp32 runs keep apart), relative to
    the repo: only [A-Za-z0-9._=,-] in the name, so that Hydra's override parser takes it quoted, and one folder per
    command, so rerunning a command resumes its runs."""
    name = ",".join(re.sub(r"[^A-Za-z0-9._=-]+", "_", o) for o in overrides) or "seed0"
    return f"outputs/demo/{method}/{name}"


def main(overrides: list[str]) -> None:
    root = os.environ.get("DLB_DATA", str(REPO / "data"))
    ensure_data(root)
    overrides = [*precision(overrides), *overrides]
    rows = []
    for method in METHODS:
        out = run_dir(method, overrides)
        cmd = [sys.executable, "-m", "dlb.train", "experiment=fashion_demo", f"method={method}", *overrides,
               f"hydra.run.dir='{out}'"]  # last: the folder this script reads the summary from
        print("demo:", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)
        rows.append(Summary.read(REPO / out))
    r0 = rows[0]
    numerics = json.loads((REPO / run_dir(METHODS[0], overrides) / CONFIG).read_text())["trainer"]["precision"]
    print(f"\nFashion-MNIST, {r0.backbone}, {r0.train_size} train images, {r0.epochs} epochs, "
          f"seed {r0.seed}, {numerics}, on {r0.environment.get('device_name')} ({r0.device})")
    print("| method | best test err % | last test err % | last NLL | last ECE | train time s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.method} | {r.best_test_err:.2f} | {r.last_test_err:.2f} | {r.last_test_nll:.3f} | "
              f"{r.last_test_ece:.3f} | {r.train_time_s:.0f} |")
    print("Train time is wall-clock on this machine: it varies with whatever else the machine runs. Runs: "
          + ", ".join(run_dir(m, overrides) for m in METHODS))


if __name__ == "__main__":
    main(sys.argv[1:])
