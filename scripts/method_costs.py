#!/usr/bin/env python
"""The method-cost table (results/method_costs.md): what each method costs on top of plain CE, by formula and
measured on this machine.

    python scripts/method_costs.py                      # resnet32, batch 64, CPU, 20 steps after 3 warm-up, median of 3

Each method runs in fresh subprocesses, interleaved (ce lsr ... dlb, ce lsr ... dlb, ...: one timed run each, median
of --repeats), through the benchmark's measurement in scripts/bench/: the model-only step and the Trainer's loop on
synthetic CIFAR-100-shaped data, 50000 training images as CIFAR. tfkd_self gets a random-init teacher of the
same architecture (a trained one costs the same). Memory: bytes autograd saves for backward in one step (parameters
excluded), bytes the method keeps between steps, and the process's peak RSS (CPU; CUDA: peak allocated).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dlb import REPO  # noqa: E402
from scripts.bench.cli import parser  # noqa: E402
from scripts.bench.measure import base_config, run_interleaved  # noqa: E402
from scripts.bench.tables import costs, machine, method_costs_table, write_outputs  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet32")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-size", type=int, default=50000)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per run (see benchmark.py)")
    p.add_argument("--methods", default=",".join(costs()))
    p.add_argument("--out", type=Path, default=REPO / "results" / "method_costs.md")
    p.add_argument("--render", type=Path, default=None, help="rewrite the table from a saved .json (no measuring)")
    a = p.parse_args(argv)
    render = a.render
    if render:  # the measurement's own command, machine and rows; only the Markdown is made again
        saved = json.loads(render.read_text())
        a = p.parse_args(saved["command"].split()[2:])
        command, m, rows = saved["command"], saved["machine"], saved["rows"]
    else:
        command = "python scripts/method_costs.py " + " ".join(sys.argv[1:] if argv is None else argv)
    settings = parser().parse_args(
        ["--backbone", a.backbone, "--batch-size", str(a.batch_size), "--device", a.device, "--steps", str(a.steps),
         "--warmup", str(a.warmup), "--repeats", str(a.repeats), "--train-size", str(a.train_size), "--test-size",
         "1000"] + (["--threads", str(a.threads)] if a.threads else []))
    if not render:
        m = machine(a.device, a.threads)
        methods = a.methods.split(",")
        runs = run_interleaved([{**base_config(settings), "method": method} for method in methods], a.repeats)
        rows = dict(zip(methods, runs))
        m["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    md, symbols = method_costs_table(rows, m, settings, command)
    print("\n" + md)
    write_outputs(a.out.with_suffix(""), md, {"machine": m, "command": command, "rows": rows, "symbols": symbols})
    return 0


if __name__ == "__main__":
    sys.exit(main())
