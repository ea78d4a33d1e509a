#!/usr/bin/env python
"""Training-speed benchmark of this repo's Trainer on synthetic CIFAR-shaped data held in memory.

    python scripts/benchmark.py                                  # resnet32, CE and DLB, batch 64, this machine
    python scripts/benchmark.py --device cuda --precision bf16 --compile reduce-overhead --steps 300
    python scripts/benchmark.py --speed                          # each speed switch alone: before/after ratios
    python scripts/benchmark.py --jobs 1,2,4 --device cuda       # sweep throughput, N runs sharing one GPU
    python scripts/benchmark.py --compile-cost --train-size 3200 # what torch.compile costs and when it repays
    python scripts/benchmark.py --keep-heap --channels-last --repeats 4  # glibc's heap kept vs handed back
    python scripts/benchmark.py --eval-batch-sizes 64,128,256,1000 --backbone resnet8,resnet32  # eval speed
    python scripts/benchmark.py --vs-official /tmp/DLB --train-size 3200 --test-size 1000 --repeats 1
                                # whole runs vs the official code (git clone github.com/Meta-knowledge-Lab/DLB)

For each method (one fresh subprocess each, so peak memory is its own):
  step  the model-only training step: the method's training_step on one fixed, pre-made batch on the device (the
        method's real forwards), loss sum, zero_grad, backward, optimizer step; no loader, no metrics
  loop  Trainer.train_epoch itself (device loader with augmentation, method, metrics), limit_train_batches=steps
  pipeline efficiency = loop / step;  epoch time vs CE = CE loop img/s / this method's (same steps per epoch)
  pil   the same loop with dataset.loader=torch: torchvision PIL transforms in DataLoader workers, two views per
        image as the official code (CE and DLB only: CS-KD's paired batches exist on the device loader only)
  eval  dlb.metrics.evaluate on the test set, eval batch 1000
  memory  CUDA: torch.cuda.max_memory_allocated over the step and loop phases.  CPU: the process's peak RSS
        (ru_maxrss: includes the Python/torch runtime and the in-memory dataset), plus two tensor measurements
        valid on any device: bytes saved for backward in one step (saved-tensor hooks, parameters excluded; eager
        only) and bytes the method keeps between steps (DLB's last batch, PS-KD's memory, a teacher's weights)
img/s counts training images consumed (B per step), so a second forward is a cost, never throughput. Each figure is
the median of --repeats timed runs of --steps steps after --warmup steps, each run in a fresh subprocess and the
configurations interleaved (A B A B ...), so a shared machine's drifting load hits all alike. Results: printed as
Markdown, written to
--out (.md and .json), and the loop img/s of each backbone/method to results/bench/throughput.json (dlb.sweep's
training-time estimate), replacing the file when it held another device's figures.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dlb import REPO  # noqa: E402
from scripts.bench import modes, official  # noqa: E402
from scripts.bench.cli import parser  # noqa: E402
from scripts.bench.tables import stop_on_sigterm  # noqa: E402


def main(argv=None) -> int:
    a = parser(__doc__).parse_args(argv)
    if a.warmup < 1:
        sys.exit("benchmark: --warmup must be >= 1 (DLB's first step has no last batch; compile happens there)")
    stop_on_sigterm()
    command = "python scripts/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    kind = "cuda" if a.device.startswith("cuda") else "cpu"
    mode = ("vs_official" if a.vs_official else "compile_cost" if a.compile_cost else "keep_heap" if a.keep_heap
            else "eval_batch" if a.eval_batch_sizes else "speed" if a.speed else "jobs" if a.jobs else "throughput")
    if a.out is None:
        a.out = REPO / "results" / "bench" / (f"{kind}_{mode}" if mode in ("vs_official", "eval_batch")
                                              else f"{kind}_{a.backbone}_b{a.batch_size}_{mode}")
    run = {"vs_official": official.run_vs_official, "compile_cost": modes.run_compile_cost,
           "keep_heap": modes.run_keep_heap, "eval_batch": modes.run_eval_batch, "speed": modes.run_speed,
           "jobs": modes.run_jobs, "throughput": modes.run_throughput}[mode]
    run(a, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
