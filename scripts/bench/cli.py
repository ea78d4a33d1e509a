"""The benchmark's settings, as scripts/benchmark.py takes them."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from dlb.sweep import THROUGHPUT_FILE

from .official import CONTENDERS


def parser(description: str | None = None) -> argparse.ArgumentParser:
    """The benchmark's settings as scripts/benchmark.py takes them (scripts/method_costs.py parses its own into
    these)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet32", help="a configs/backbone name")
    p.add_argument("--methods", default="ce,dlb",
                   help="comma-separated; ce first gives the epoch-time ratios; an entry may carry method settings, "
                   "e.g. dlb:backward=split")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:<i>")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead", "max-autotune"])
    p.add_argument("--fused", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat (use >= 200 on a GPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per run (default: torch's); 1 is "
                   "steadier on a machine shared with other jobs")
    p.add_argument("--train-size", type=int, default=50000)
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--eval-batches", type=int, default=2, help="eval batches of 1000 per timed repeat")
    p.add_argument("--pil-workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader workers of the PIL path (0: in the main process)")
    p.add_argument("--no-pil", action="store_true", help="skip the PIL/DataLoader comparison")
    p.add_argument("--pil-methods", default="ce,dlb",
                   help="the entries that get a device-loader vs PIL pair (default: ce,dlb)")
    p.add_argument("--no-pairs", action="store_true",
                   help="skip the paired CE-vs-method runs: epoch time vs CE then comes from the separate rows")
    p.add_argument("--speed", action="store_true", help="before/after ratio of each speed switch")
    p.add_argument("--variants", default=None, help="--speed: only the switches whose name contains one of these")
    p.add_argument("--jobs", default=None, help="e.g. 1,2,4: that many concurrent runs on the device, total img/s")
    p.add_argument("--eval-batch-sizes", default=None, metavar="64,128,...",
                   help="evaluation img/s of each --backbone (comma-separated) at these eval batch sizes")
    p.add_argument("--keep-heap", action="store_true",
                   help="trainer.keep_heap on vs off, a fresh process per run: img/s and minor page faults per step")
    p.add_argument("--compile-cost", action="store_true",
                   help="the one-off cost of torch.compile and the steps that repay it (trainer.compile=auto's rule)")
    p.add_argument("--vs-official", default=None, metavar="DLB_CHECKOUT",
                   help="time whole training processes against the official code checked out there")
    p.add_argument("--data", default=None, help="--vs-official: a real CIFAR-100 root (default: synthetic files)")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help="--vs-official: the rows to time, official first (default: all)")
    p.add_argument("--out", type=Path, default=None,
                   help="write <out>.md and <out>.json (default under results/bench/)")
    p.add_argument("--throughput-file", default=str(THROUGHPUT_FILE), help="'' to leave it alone")
    return p
