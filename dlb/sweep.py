"""Plan or run an experiment's grid.

    python -m dlb.sweep experiment=table1_cifar100                 # dry run: job list, count, training time
    python -m dlb.sweep experiment=table1_cifar100 --run [launcher=slurm ...]

The grid is the experiment config's `hydra.sweeper.params`, with command-line values taking precedence (as in
`python -m dlb.train -m`). `--run` launches it through Hydra multirun in stages: the ce runs first when the grid
also holds tfkd_self (whose teacher=auto needs them), then everything else. Overrides are passed through, so
`launcher=...`, `debug=...` and narrowing (`seed=0`) work as with dlb.train.
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys

from hydra.core.override_parser.overrides_parser import OverridesParser

from dlb import REPO
from dlb.config import compose
from dlb.data.datasets import TRAIN_SIZES
from dlb.methods import METHODS

THROUGHPUT_FILE = REPO / "results" / "bench" / "throughput.json"  # written by scripts/benchmark.py


def plan(overrides: list[str]) -> tuple[list[str], list[list[str]]]:
    """(fixed overrides, one override list per job) for the experiment named in `overrides`."""
    cfg = compose([o for o in overrides if "," not in o.partition("=")[2]], with_hydra=True)  # sweeps can't compose
    grid = {k: str(v) for k, v in (cfg.hydra.sweeper.params or {}).items()}
    fixed = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+~") in grid or "," in value:  # the command line narrows or widens a grid axis
            grid[key.lstrip("+~")] = value
        else:
            fixed.append(o)
    values = [o.sweep_string_iterator() if o.is_sweep_override() else [o.get_value_element_as_str()]
              for o in OverridesParser.create().parse_overrides([f"{k}={spec}" for k, spec in grid.items()])]
    axes = [[f"{k}={v}" for v in axis] for k, axis in zip(grid, values)]
    return fixed, [list(job) for job in itertools.product(*axes)]


def _throughputs() -> dict:
    try:
        return json.loads(THROUGHPUT_FILE.read_text())
    except (OSError, ValueError):
        return {}


def estimate_hours(fixed: list[str], jobs: list[list[str]]) -> tuple[float | None, list[str]]:
    """Training hours on the measured device from its training throughput (THROUGHPUT_FILE); None and the missing
    cells when a job's cell was never measured."""
    rates, total, missing = _throughputs().get("img_per_s", {}), 0.0, set()
    for job in jobs:
        cfg = compose(fixed + job)
        key = f"{cfg.backbone.name}/{cfg.method.name}"
        if not (rate := rates.get(key)):
            missing.add(key)
            continue
        n = cfg.dataset.train_subset or TRAIN_SIZES.get(cfg.dataset.name, 50000)
        total += cfg.trainer.epochs * n / rate / 3600
    return (None if missing else total), sorted(missing)


def _seed(overrides: list[str]) -> int:
    """The seed a job runs with: its seed= override, else the config's default."""
    given = [o.partition("=")[2] for o in overrides if o.startswith("seed=")]
    return int(given[-1]) if given else int(compose([o for o in overrides if "," not in o]).seed)


def stages(jobs: list[list[str]]) -> list[list[list[str]]]:
    methods = {o.split("=", 1)[1] for job in jobs for o in job if o.startswith("method=")}
    if not any(m in METHODS and METHODS[m].needs_teacher for m in methods) or "ce" not in methods:
        return [jobs]
    return [[job for job in jobs if "method=ce" in job], [job for job in jobs if "method=ce" not in job]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, at least experiment=<name>")
    p.add_argument("--run", action="store_true", help="launch the grid (default: print the plan only)")
    p.add_argument("--no-estimate", action="store_true", help="skip the training-time estimate")
    p.add_argument("--part", metavar="I/N", help="only the jobs whose seed %% N == I: N processes side by side, each "
                   "with its share of the seeds (a run several experiments share has one seed, so no two parts ever "
                   "train the same run)")
    args = p.parse_intermixed_args(argv)
    if not any(o.startswith("experiment=") for o in args.overrides):
        p.error("name the experiment: experiment=<name> (see configs/experiment/)")
    fixed, jobs = plan(args.overrides)
    if args.part:
        i, _, n = args.part.partition("/")
        if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
            p.error(f"--part {args.part}: use I/N with 0 <= I < N, e.g. --part 0/2 and --part 1/2")
        jobs = [job for job in jobs if _seed(fixed + job) % int(n) == int(i)]
    parts = stages(jobs)
    for i, stage in enumerate(parts, 1):
        print(f"# stage {i}/{len(parts)}: {len(stage)} jobs", *("  " + " ".join(job) for job in stage), sep="\n")
    print(f"{len(jobs)} jobs; fixed overrides: {' '.join(fixed)}")
    if not args.no_estimate:
        hours, missing = estimate_hours(fixed, jobs)
        device = _throughputs().get("device")  # "cpu: <model> (<n> threads)" or the GPU's name (scripts/benchmark.py)
        kind = "device" if not device else "CPU" if device.startswith("cpu") else "GPU"
        device = device or "an unnamed device"
        if hours is None:
            print(f"Training-time estimate: unknown; no throughput measured for {', '.join(missing)} in "
                  f"{THROUGHPUT_FILE.relative_to(REPO)} (its figures are for {device}; measure on the target "
                  "machine with scripts/benchmark.py, e.g. --device cuda)")
        else:
            print(f"Training-time estimate: {hours:.1f} {kind} hours on {device} (measured img/s x images x epochs; "
                  "evaluation and start-up not included)" + ("; not a GPU figure: measure on the GPU with "
                  "scripts/benchmark.py --device cuda" if kind == "CPU" else ""))
    if not args.run or not jobs:  # (a part may hold none of the grid's seeds)
        return 0
    for stage in parts:
        axes: dict[str, dict[str, None]] = {}  # the stage's jobs as Hydra sweep overrides (key=v1,v2,...), in order
        for k, _, v in (o.partition("=") for job in stage for o in job):
            axes.setdefault(k, {})[v] = None
        cmd = [sys.executable, "-m", "dlb.train", "-m", *fixed, *(f"{k}={','.join(v)}" for k, v in axes.items())]
        print("+", " ".join(cmd[1:]), flush=True)
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            print("dlb.sweep: a stage failed; fix it and rerun the same command (finished jobs are skipped)",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
