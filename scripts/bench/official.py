"""This repo's training command vs the official DLB code (github.com/Meta-knowledge-Lab/DLB), whole processes."""
from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from dlb import REPO
from dlb.config import compose
from dlb.data.datasets import TRAIN_SIZES
from dlb.data.datasets.cifar import write_py2_pickle
from dlb.device.speed import resolve_speed

from .tables import fmt, machine, publish


def write_synthetic_cifar100(root: Path, n_train: int, n_test: int) -> dict:
    """CIFAR-100's extracted archive under root (python pickles of the train and test batches and meta, as torchvision
    reads them) holding random images, and the environment a child needs so that torchvision's md5 check accepts
    these files (site/sitecustomize.py)."""
    spec = torchvision.datasets.CIFAR100
    folder = root / spec.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    files = {spec.train_list[0][0]: (n_train, "training batch 1 of 1", "img"),
             spec.test_list[0][0]: (n_test, "testing batch 1 of 1", "test")}
    for seed, (fname, (n, batch_label, stem)) in enumerate(files.items(), 1):
        rng = np.random.default_rng(seed)
        data, labels = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 100, n).tolist()
        files[fname] = {"batch_label": batch_label, "fine_labels": labels, "data": data,
                        "filenames": [f"{stem}_{j}.png" for j in range(n)], "coarse_labels": [k // 5 for k in labels]}
    files[spec.meta["filename"]] = {"fine_label_names": [f"class_{i}" for i in range(100)],
                                    "coarse_label_names": [f"super_{i}" for i in range(20)]}
    for fname, obj in files.items():
        write_py2_pickle(folder / fname, obj)
    site = str(Path(__file__).resolve().parent / "site")
    return {**os.environ, "DLB_BENCH_CIFAR100": str(root),
            "PYTHONPATH": os.pathsep.join([site, os.environ.get("PYTHONPATH", "")])}


OFFICIAL_WORKERS = 16  # the official scripts' --num_workers default (dlb.py/base.py L22)
CONTENDERS = ("official", "official-workers", "ours", "ours-full", "ours-heap-off", "faithful", "ours-bf16")


def vs_official_commands(official: Path, root: Path, method: str, epochs: int, workers: int,
                         contenders=CONTENDERS) -> dict:
    """{contender: (row name, command)} for `epochs` epochs: the official script with its README's settings, at its
    own defaults (16 DataLoader workers) and with `workers` workers, and ours (python -m dlb.train) at its defaults, at
    the settings its full-length run resolves, those with glibc's default heap trimming, with trainer.faithful=true,
    and with bf16 autocast added to the full-run settings."""
    py = sys.executable
    if method == "dlb":
        off = [py, str(official / "dlb.py"), "--dataset", "cifar100", "--root", str(root), "--model_names", "resnet32",
               "--classes_num", "100", "--T", "3", "--alpha", "1", "--batch_size", "64", "--epoch", str(epochs),
               "--lr", "0.05", "--milestones", "150", "180", "210"]
    else:  # base.py trains each --model_names entry (default two resnet20s); one resnet32 = CE
        off = [py, str(official / "base.py"), "--dataset", "cifar100", "--root", str(root), "--model_names",
               "resnet32", "--classes_num", "100", "--batch_size", "64", "--epoch", str(epochs)]
    ours = [py, "-m", "dlb.train", "dataset=cifar100", f"dataset.root={root}", "backbone=resnet32", f"method={method}",
            f"trainer.epochs={epochs}", "trainer.progress=false"]
    # A short run stays eager (trainer.compile=auto compiles CPU runs long enough to repay it); the full-length run
    # the same command starts without trainer.epochs gets the settings below, measured here per epoch.
    full = full_run_speed(method)
    full_cmd = [*ours, f"trainer.compile={full.compile}"]
    rows = {"official": (f"official ({OFFICIAL_WORKERS} workers, its default)", off),
            "official-workers": (f"official, {workers} workers", [*off, "--num_workers", str(workers)]),
            "ours": ("ours, defaults", ours),
            "ours-full": (f"ours, full-run settings ({full.describe()})", full_cmd),
            "faithful": ("ours, trainer.faithful=true", [*ours, "trainer.faithful=true"]),
            "ours-heap-off": ("ours, full-run settings, glibc's heap trimming on (trainer.keep_heap=false)",
                              [*full_cmd, "trainer.keep_heap=false"]),
            "ours-bf16": ("ours, full-run settings + bf16 autocast (trainer.precision=bf16, opt-in)",
                          [*full_cmd, "trainer.precision=bf16"])}
    return {key: row for key, row in rows.items() if key in contenders}


def full_run_speed(method: str):
    """The speed settings `python -m dlb.train dataset=cifar100 backbone=resnet32 method=<method>` resolves on the CPU
    for its full length (the recipe's epochs over all of CIFAR-100)."""
    cfg = compose(["dataset=cifar100", "backbone=resnet32", f"method={method}"])
    steps = cfg.trainer.epochs * math.ceil(TRAIN_SIZES[cfg.dataset.name] / cfg.trainer.batch_size)
    return resolve_speed(cfg.trainer, cfg.optim, torch.device("cpu"), steps)


def run_or_exit(cmd: list[str], cwd: Path, env: dict) -> None:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"benchmark: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")


def run_vs_official(a, command: str) -> None:
    """Wall time of whole training processes, E=1 and E=3 epochs, interleaved; per-epoch = (wall(3) - wall(1)) / 2,
    so start-up, data loading and compiling (if any, from a warm cache) cancel; the median over repeats."""
    official = Path(a.vs_official).resolve()
    if not (official / "dlb.py").is_file() or not (official / "base.py").is_file():
        sys.exit(f"benchmark: {official} holds no dlb.py/base.py of github.com/Meta-knowledge-Lab/DLB")
    m = machine("cpu") | {"omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset")}
    methods, workers, contenders = a.methods.split(","), a.pil_workers, a.contenders.split(",")
    if "official" not in contenders or set(contenders) - set(CONTENDERS):
        sys.exit(f"benchmark: --contenders {a.contenders}: choose from {','.join(CONTENDERS)}, official included "
                 "(the ratios are against it)")
    walls: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if a.data:
            root, env = Path(a.data).resolve(), dict(os.environ)
            data_note = f"CIFAR-100 at {a.data}"
        else:
            root = Path(tmp) / "data"
            env = write_synthetic_cifar100(root, a.train_size, a.test_size)
            data_note = (f"synthetic CIFAR-100 (python-pickle format, random images: speed does not depend on pixel "
                         f"values), {a.train_size} train / {a.test_size} test images")
        env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
        # One untimed epoch of each compiled contender first: inductor caches compiled graphs on disk, so otherwise
        # the first timed process alone would pay the compile and it would not cancel in wall(3) - wall(1).
        for method in methods:
            for key, (who, cmd) in vs_official_commands(official, root, method, 1, workers, contenders).items():
                if any(c.startswith("trainer.compile=") and c != "trainer.compile=none" for c in cmd):
                    print(f"benchmark: {method} {who}: one untimed epoch (compile cache) ...", flush=True)
                    run_or_exit([*cmd, f"hydra.run.dir={tmp}/runs/{method}-{key}-warm-up"], REPO, env)
        for r in range(a.repeats):
            for method in methods:
                for epochs in ((1, 3) if r % 2 == 0 else (3, 1)):
                    for key, (who, cmd) in vs_official_commands(official, root, method, epochs, workers,
                                                                contenders).items():
                        is_official = key.startswith("official")
                        if not is_official:
                            cmd = [*cmd, f"hydra.run.dir={tmp}/runs/{method}-{key}-{epochs}-{r}"]
                        cwd = Path(tmp) / "cwd" if is_official else REPO  # the official writes under ./
                        cwd.mkdir(exist_ok=True)
                        print(f"benchmark: {method} {who} {epochs} epoch(s) (repeat {r + 1}/{a.repeats}) ...",
                              flush=True)
                        t0 = time.perf_counter()
                        run_or_exit(cmd, cwd, env)
                        walls.setdefault((method, key, who), {}).setdefault(epochs, []).append(time.perf_counter() - t0)
    rows = []
    for (method, key, who), w in walls.items():
        per_epoch = [(w3 - w1) / 2 for w1, w3 in zip(w[1], w[3])]
        rows.append({"method": method, "contender": key, "who": who, "wall_1": w[1], "wall_3": w[3],
                     "epoch_s_runs": per_epoch, "epoch_s": statistics.median(per_epoch)})
    official_s = {r["method"]: r["epoch_s"] for r in rows if r["contender"] == "official"}
    few_s = {r["method"]: r["epoch_s"] for r in rows if r["contender"] == "official-workers"}
    lines = ["| method | loop | wall 1 epoch s | wall 3 epochs s | s per epoch | vs official defaults (> 1: faster) "
             f"| vs official, {workers} workers |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        r["speedup_vs_official"] = official_s[r["method"]] / r["epoch_s"]
        r["speedup_vs_official_few_workers"] = few_s[r["method"]] / r["epoch_s"] if r["method"] in few_s else None
        lines.append(f"| {r['method']} | {r['who']} | {statistics.median(r['wall_1']):.1f} | "
                     f"{statistics.median(r['wall_3']):.1f} | {r['epoch_s']:.1f} | {r['speedup_vs_official']:.2f} | "
                     f"{fmt(r['speedup_vs_official_few_workers'], 2)} |")
    examples = vs_official_commands(Path("<DLB checkout>"), Path("<root>"), methods[-1], 3, workers)
    body = (f"- data: {data_note}; resnet32, batch 64, CIFAR-100 recipe\n"
            f"- official: github.com/Meta-knowledge-Lab/DLB (dlb.py for DLB, base.py with one resnet32 for CE), its "
            f"`torch._six.string_classes` replaced by `str`, at its defaults ({OFFICIAL_WORKERS} DataLoader workers) "
            f"and with --num_workers {workers} (fewer workers than its default suit this machine better); e.g. "
            f"`{' '.join(examples['official'][1][1:])}`\n"
            f"- ours: `{' '.join(examples['ours'][1][1:])}` at defaults (eager: a 3-epoch run is too short to repay "
            f"compiling), at the settings the full-length run of the same command resolves (compile time falls in "
            f"the first epoch and cancels; one untimed epoch per compiled contender fills inductor's cache first), "
            f"those with trainer.keep_heap=false, with trainer.faithful=true, and with bf16 autocast added to the "
            f"full-run settings (opt-in: it changes the numerics)\n"
            f"- per epoch = (wall(3 epochs) - wall(1 epoch)) / 2 of whole processes (start-up and data loading cancel; "
            f"each epoch includes its evaluation), median of {a.repeats} interleaved repeat(s); OMP_NUM_THREADS "
            f"{m['omp_num_threads']} (each process picks its own threads)\n\n" + "\n".join(lines) + "\n")
    publish(a, m, command, "This repo vs the official DLB code: resnet32, batch 64, CPU", body, {"rows": rows}, True,
            settings="whole training processes, each with its own defaults (below)")
