#!/usr/bin/env python
"""`make demo`: CE vs DLB on Fashion-MNIST with a small CIFAR ResNet, then a table of test error.

Gets the data itself where it can (already on disk; torchvision's download with internet; Debian's
dataset-fashion-mnist package when running as root), otherwise prints the one command to run.
Extra arguments are passed to every training run as Hydra overrides, e.g. `scripts/demo.py seed=1`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dlb.datasets import load_dataset  # noqa: E402
from dlb.errors import DatasetError  # noqa: E402

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


def main(overrides: list[str]) -> None:
    root = os.environ.get("DLB_DATA", str(REPO / "data"))
    ensure_data(root)
    rows = []
    for method in METHODS:
        out = REPO / "outputs" / "demo" / method / "-".join(["seed0", *overrides]).replace("/", "_")
        cmd = [sys.executable, "-m", "dlb.train", "experiment=fashion_demo", f"method={method}",
               f"hydra.run.dir={out}", *overrides]
        print("demo:", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)
        rows.append(json.loads((out / "summary.json").read_text()))
    print(f"\nFashion-MNIST, {rows[0]['backbone']}, {rows[0]['train_size']} train images, full 10k test set, "
          f"{rows[0]['epochs']} epochs, seed {rows[0]['seed']}, {rows[0]['device_name']} ({rows[0]['device']})")
    print(f"| method | best test err % | last test err % | last NLL | last ECE | train time s |")
    print(f"|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['best_test_err']:.2f} | {r['last_test_err']:.2f} | {r['last_test_nll']:.3f} | "
              f"{r['last_test_ece']:.3f} | {r['train_time_s']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
