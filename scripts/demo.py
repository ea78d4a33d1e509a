#!/usr/bin/env python
"""`make demo`: CE vs DLB on Fashion-MNIST with a small CIFAR ResNet, then a table of test error, what a difference
of that size means, and a plot of test error per epoch.

Gets the data itself where it can (already on disk; torchvision's download with internet; Debian's
dataset-fashion-mnist package when running as root), one line per step, otherwise prints the one command to run.
Before training it estimates the whole demo's time from a few timed training steps, and corrects the estimate once
each run's first epoch is done. Extra arguments are passed to every training run as Hydra overrides, e.g.
`scripts/demo.py seed=1` (`make demo ARGS="seed=1"`); each command's runs go to outputs/demo/<method>/<its overrides>/.

Where the run's device does bf16 maths in hardware (a CPU with AMX or AVX512-BF16, a GPU), the demo trains under
bf16 autocast (trainer.precision=bf16): 2 min 41 s instead of 4 min 14 s on a 2-core AMX CPU, with test errors
within a seed's noise of fp32 (docs/performance.md). `scripts/demo.py trainer.precision=fp32` runs the official
numerics.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from dlb.data.datasets import load_dataset  # noqa: E402
from dlb.data.datasets.fashion_mnist import FASHION_MNIST_SYSTEM_DIR  # noqa: E402
from dlb.data.loader import Batch  # noqa: E402
from dlb.device.placement import resolve_device  # noqa: E402
from dlb.device.speed import native_bf16  # noqa: E402
from dlb.errors import ConfigError, DatasetError  # noqa: E402
from dlb.run.folder import RunFolder, Summary  # noqa: E402
from dlb.train import EXIT_INTERRUPTED, EXIT_PREEMPTED, load_config  # noqa: E402

IMPORT_S = time.perf_counter() - STARTED  # what each training process also spends before its first step
METHODS = ("ce", "dlb")
EXPERIMENT = "experiment=fashion_demo"
APT_PACKAGE = "dataset-fashion-mnist"
APT_LOG = REPO / "outputs" / "demo" / "apt-get.log"
SEED_RESULTS = REPO / "results" / "cpu_claims" / "cpu_claims.json"  # the committed 3-seed CPU-scale results


def say(line: str) -> None:
    print(f"demo: {line}", flush=True)


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


# --- the data ---------------------------------------------------------------------------------------------------
def have_data(root: str) -> bool:
    try:
        load_dataset("fashion_mnist", root, train=False)
        return True
    except DatasetError:
        return False


def download(root: str) -> str | None:
    """torchvision's download into root (its progress and retries silenced); None when it worked, else why not, in
    one line."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            for train in (True, False):
                load_dataset("fashion_mnist", root, train=train, download=True)
        return None
    except DatasetError as e:
        why = str(e.__cause__ or e).strip().splitlines() or [type(e).__name__]
        return why[0][:160]


def apt_install(log: Path) -> bool:
    """`apt-get install` of Debian's package (after `apt-get update` if the first try fails), all output into log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with open(log, "w") as out:
        for cmd in (["apt-get", "install", "-y", APT_PACKAGE], ["apt-get", "update"],
                    ["apt-get", "install", "-y", APT_PACKAGE]):
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode == 0 and \
                    cmd[1] == "install":
                return True
    return False


def last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:160] if lines else "no output"


def ensure_data(root: str) -> None:
    """One line for each step of finding Fashion-MNIST; exits with the one command to run when nothing worked."""
    if have_data(root):
        return say(f"data: Fashion-MNIST found on disk (looked in {root}, then {FASHION_MNIST_SYSTEM_DIR})")
    say(f"data: Fashion-MNIST not in {root} or {FASHION_MNIST_SYSTEM_DIR}; downloading it with torchvision ...")
    why = download(root)
    if why is None and have_data(root):
        return say(f"data: downloaded into {root}")
    say(f"data: download failed: {why}")
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        say(f"data: installing Debian's {APT_PACKAGE} package with apt-get (output in {APT_LOG}) ...")
        if apt_install(APT_LOG) and have_data(root):
            return say(f"data: installed at {FASHION_MNIST_SYSTEM_DIR}")
        say(f"data: apt-get failed ({last_line(APT_LOG)}); full log: {APT_LOG}")
    command = (f"sudo apt-get install -y {APT_PACKAGE}" if apt else
               f"python -m dlb.train {EXPERIMENT} dataset.download=true trainer.epochs=1 (on a machine with internet)")
    sys.exit(f"demo: data: no Fashion-MNIST. Run: {command}")


# --- the runs ---------------------------------------------------------------------------------------------------
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


def epochs_done(method: str, overrides: list[str]) -> int:
    summary = RunFolder(REPO / run_dir(method, overrides)).summary
    return json.loads(summary.read_text()).get("epochs_completed", 0) if summary.is_file() else 0


# --- the estimate -----------------------------------------------------------------------------------------------
def step_seconds(overrides: list[str], warmup: int = 2, steps: int = 5) -> tuple[dict[str, float], float, object]:
    """Seconds per training step of each method and per test image, timed on a few steps of the demo's network at
    its batch size on random images (after warm-up steps), with the speed settings and precision the runs resolve;
    and the composed config."""
    import timm

    import dlb.models  # noqa: F401  (the cifar_* networks)
    from dlb.device.placement import set_threads
    from dlb.device.speed import build_optimizer, keep_heap, resolve_speed
    from dlb.methods import build_method

    torch.manual_seed(0)
    per_step, cfg = {}, None
    for method in METHODS:
        cfg = load_config([EXPERIMENT, f"method={method}", *overrides])
        device = resolve_device(cfg.trainer.device)
        set_threads(cfg.trainer.threads)
        speed = resolve_speed(cfg.trainer, cfg.optim, device, steps=1)  # (a short run: no torch.compile)
        if speed.keep_heap:
            keep_heap()
        layout = torch.channels_last if speed.channels_last else torch.contiguous_format
        model = timm.create_model(cfg.backbone.name, num_classes=10).to(device, memory_format=layout)
        optimizer = build_optimizer(cfg.optim, model.parameters(), fused=speed.fused)
        algo = build_method(cfg.method)
        b, s = cfg.trainer.batch_size, cfg.dataset.image_size
        batch = Batch(views=[torch.randn(b, 3, s, s, device=device).to(memory_format=layout) for _ in range(2)],
                      y=torch.randint(0, 10, (b,), device=device))
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=speed.bf16)
        for i in range(warmup + steps):
            if i == warmup:
                start = time.perf_counter()
            optimizer.zero_grad()
            with autocast:
                _, losses = algo.training_step(model, batch)
            sum(losses.values()).backward()
            optimizer.step()
        per_step[method] = (time.perf_counter() - start) / steps
    x = torch.randn(speed.eval_batch_size, 3, s, s, device=device).to(memory_format=layout)
    with torch.no_grad(), autocast:
        start = time.perf_counter()
        for _ in range(steps):
            model(x)
    return per_step, (time.perf_counter() - start) / steps / speed.eval_batch_size, cfg


def estimate(overrides: list[str], root: str) -> tuple[float, float]:
    """(seconds the demo's training runs will take, DLB's step time / CE's), from timed steps; runs done earlier
    by the same command count only for their remaining epochs."""
    per_step, eval_s_per_image, cfg = step_seconds(overrides)
    start = time.perf_counter()
    test = len(load_dataset("fashion_mnist", root, train=False))
    load_s = time.perf_counter() - start
    train = cfg.dataset.train_subset or len(load_dataset("fashion_mnist", root, train=True))
    test = min(cfg.dataset.test_subset or test, test)
    startup_s = IMPORT_S + 7 * load_s  # each run imports torch and decodes the 60k training and 10k test images
    total = 0.0
    for method in METHODS:
        left = cfg.trainer.epochs - epochs_done(method, overrides)
        if left > 0:
            epoch_s = math.ceil(train / cfg.trainer.batch_size) * per_step[method] + test * eval_s_per_image
            total += startup_s + left * epoch_s
    return total, per_step["dlb"] / per_step["ce"]


# --- what the numbers mean --------------------------------------------------------------------------------------
def seed_noise_line(backbone: str, ce_err: float, dlb_err: float, path: Path = SEED_RESULTS) -> str:
    """One line on a one-seed difference, read against the seed-to-seed spread of the committed multi-seed results:
    CE's best-epoch error across seeds and DLB's gain over CE paired by seed, for the same backbone."""
    diff = ce_err - dlb_err
    ahead = f"DLB is {diff:.2f} points ahead of CE" if diff >= 0 else f"DLB is {-diff:.2f} points behind CE"
    rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    results = json.loads(path.read_text())
    ce = next((r for r in results["rows"] if (r["backbone"], r["method"], r["setting"], r.get("variant", "")) ==
               (backbone, "ce", "", "")), None)
    paired = next((c["best"] for claim in results["claims"] for c in claim["comparisons"]
                   if (c["backbone"], c["setting"], c.get("base"), c.get("method")) == (backbone, "", "ce", "dlb")), None)
    if ce is None or paired is None or ce["best"]["std"] is None or paired.get("lo") is None:
        return f"{ahead} on one seed; {rel} has no multi-seed {backbone} result to compare it with: rerun with seed=1, 2"
    spread = ce["best"]["std"]
    size = "less" if abs(diff) < spread else "more"
    meaning = "one seed cannot tell it from noise" if size == "less" else "yet one seed is no proof"
    return (f"{ahead} on one seed: {size} than one run's seed-to-seed spread (CE ±{spread:.2f} points over seeds "
            f"{', '.join(map(str, ce['seeds']))} in {rel}, where DLB beat CE by {paired['mean']:+.2f} points, 95 % "
            f"interval [{paired['lo']:+.2f}, {paired['hi']:+.2f}], on {paired['n']} "
            f"paired seeds), so {meaning}; rerun with other seeds: make demo ARGS=\"seed=1\"")


def plot_curves(run_dirs: dict[str, str], path: Path, title: str) -> Path:
    """Test error per epoch of each run, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, folder in run_dirs.items():
        rows = RunFolder(REPO / folder).read_metrics()
        ax.plot([r["epoch"] for r in rows], [r["test_err"] for r in rows], marker="o", label=method.upper())
    ax.set(xlabel="epoch", ylabel="test error (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- the demo ---------------------------------------------------------------------------------------------------
def train(method: str, cmd: list[str], next_ratio: float | None) -> None:
    """Run one training command, passing its lines through. After its first epoch line, say how long the rest of the
    demo will take from that epoch's time: this run's remaining epochs, and the next run's (if `next_ratio`, its step
    time / this run's) at the same start-up time and scaled epoch time."""
    start, first_line_at, refined = time.perf_counter(), None, False
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        try:
            for line in proc.stdout:
                print(line, end="", flush=True)
                first_line_at = first_line_at or time.perf_counter()  # the start-up line: data loaded, model built
                m = re.match(r"epoch (\d+)/(\d+)  ", line)
                if m and not refined:
                    refined = True
                    epoch_s, epochs = time.perf_counter() - first_line_at, int(m[2])
                    rest = (epochs - int(m[1])) * epoch_s
                    if next_ratio is not None:
                        rest += first_line_at - start + epochs * epoch_s * next_ratio
                    say(f"estimate: about {_clock(rest)} left ({method.upper()}'s first epoch took {_clock(epoch_s)})")
        except KeyboardInterrupt:  # Ctrl-C reached the run too: it saves its position and stops
            proc.wait()
    if proc.returncode in (EXIT_PREEMPTED, EXIT_INTERRUPTED):  # the run saved its position before stopping
        sys.exit(f"demo: the {method.upper()} run stopped; run the same command again to continue where it stopped")
    if proc.returncode:
        sys.exit(f"demo: the {method.upper()} run failed with exit code {proc.returncode} (the lines above say why)")


def main(overrides: list[str]) -> None:
    root = os.environ.get("DLB_DATA", str(REPO / "data"))
    ensure_data(root)
    overrides = [*precision(overrides), *overrides]
    total, ratio = estimate(overrides, root)
    say(f"estimate: about {_clock(total + time.perf_counter() - STARTED)} in all (timed from a few training steps; "
        f"corrected after each run's first epoch)")
    rows, folders = [], {m: run_dir(m, overrides) for m in METHODS}
    for i, method in enumerate(METHODS):
        out = folders[method]
        cmd = [sys.executable, "-m", "dlb.train", EXPERIMENT, f"method={method}", *overrides,
               f"hydra.run.dir='{out}'"]  # last: the folder this script reads the summary from
        say("python " + " ".join(cmd[1:]))
        train(method, cmd, ratio if i + 1 < len(METHODS) else None)  # (METHODS: CE, then DLB)
        rows.append(Summary.read(REPO / out))
    r0 = rows[0]
    numerics = RunFolder(REPO / folders[METHODS[0]]).read_config()["trainer"]["precision"]
    print(f"\nFashion-MNIST, {r0.backbone}, {r0.train_size} train images, {r0.epochs} epochs, "
          f"seed {r0.seed}, {numerics}, on {r0.environment.get('device_name')} ({r0.device})")
    print("| method | best test err % | last test err % | last NLL | last ECE | train time s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.method} | {r.best_test_err:.2f} | {r.last_test_err:.2f} | {r.last_test_nll:.3f} | "
              f"{r.last_test_ece:.3f} | {r.train_time_s:.0f} |")
    by_method = {r.method: r for r in rows}
    print(seed_noise_line(r0.backbone, by_method["ce"].best_test_err, by_method["dlb"].best_test_err))
    png = plot_curves(folders, REPO / "outputs" / "demo" / f"curves_{Path(folders['ce']).name}.png",
                      f"Fashion-MNIST, {r0.backbone}, seed {r0.seed}: test error per epoch")
    print(f"Test error per epoch, CE vs DLB: {png.relative_to(REPO)}")
    print("Train time is wall-clock on this machine: it varies with whatever else the machine runs. Runs: "
          + ", ".join(folders.values()))
    say(f"done in {_clock(time.perf_counter() - STARTED)}")


if __name__ == "__main__":
    main(sys.argv[1:])
