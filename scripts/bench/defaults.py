"""The measurements behind the trainer's auto settings: trainer.eval_batch_size (eval speed by batch size),
trainer.compile (what compiling costs and when it repays), trainer.keep_heap (glibc's heap kept or handed back)."""
from __future__ import annotations

import time

import torch

from dlb.config import compose
from dlb.device.speed import CPU_COMPILE_MIN_STEPS
from dlb.models import build_model

from .measure import base_config, run_child, run_interleaved, sync
from .tables import fmt, machine, publish


def run_eval_batch(a, command: str) -> None:
    """Forward-only img/s of each backbone at each eval batch size (no grad, eval mode, channels_last as the speed
    defaults), in this process, the sizes interleaved over --repeats rounds, the best round each (the least disturbed
    by other load)."""
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    m = machine(a.device, a.threads)
    sizes = [int(x) for x in a.eval_batch_sizes.split(",")]
    n = max(sizes) * 2
    rows = []
    for backbone in a.backbone.split(","):
        model = build_model(compose([f"backbone={backbone}", "dataset=cifar100"]), 100).to(device)
        model = model.to(memory_format=torch.channels_last).eval()
        x = torch.randn(n, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        best = {bs: float("inf") for bs in sizes}
        with torch.no_grad():
            model(x[:sizes[0]])  # warm-up
            for _ in range(a.repeats):
                for bs in sizes:
                    sync(device)
                    t0 = time.perf_counter()
                    for i in range(0, n, bs):
                        model(x[i:i + bs])
                    sync(device)
                    best[bs] = min(best[bs], time.perf_counter() - t0)
        rows.append({"backbone": backbone, "img_per_s": {bs: n / t for bs, t in best.items()}})
    top = [max(r["img_per_s"].values()) for r in rows]
    lines = ["| backbone | " + " | ".join(f"batch {bs}" for bs in sizes) + " |", "|---|" + "---|" * len(sizes)]
    lines += [f"| {r['backbone']} | " + " | ".join(f"{r['img_per_s'][bs]:,.0f} ({r['img_per_s'][bs] / t:.2f})"
                                                     for bs in sizes) + " |" for r, t in zip(rows, top)]
    body = (f"- forward-only img/s over {n} images per round, eval mode, no grad, channels_last, best of {a.repeats} "
            "interleaved rounds; in brackets: the fraction of the backbone's fastest size\n"
            "- trainer.eval_batch_size=auto uses dlb.device.speed.EVAL_BATCH per device kind\n\n" + "\n".join(lines)
            + "\n")
    publish(a, m, command, f"Evaluation speed by eval batch size, {a.device}", body, {"rows": rows}, True,
            settings=f"torch threads {m['torch_threads']}")


def run_compile_cost(a, command: str) -> None:
    m = machine(a.device, a.threads)
    base = {**base_config(a), "channels_last": True, "fused": "true", "compile_cost": True}
    rows = [run_child({**base, "method": method}) for method in a.methods.split(",")]
    lines = ["| method | compile s | eager s/step | compiled s/step | step ratio | repaid after steps |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} |||||")
            continue
        lines.append(f"| {r['method']} | {r['compile_s']:.1f} | {r['eager_s_per_step']:.3f} | "
                     f"{r['compiled_s_per_step']:.3f} | {r['eager_s_per_step'] / r['compiled_s_per_step']:.2f} | "
                     f"{fmt(r['repaid_after_steps'])} |")
    body = (f"- Trainer.train_epoch on {a.train_size} images ({a.train_size // a.batch_size} steps per epoch), "
            "channels_last and fused SGD, eager vs compile default; compile s = (epoch 0 - epoch 1) compiled minus the "
            "same difference eager (a cold compile: an empty inductor cache; later runs reuse cached kernels and "
            "compile faster); s/step from epoch 1; one run per method (a fresh process)\n"
            f"- trainer.compile=auto compiles on CPU from {CPU_COMPILE_MIN_STEPS} optimizer steps per run\n\n"
            + "\n".join(lines) + "\n")
    publish(a, m, command, f"Compile cost on CPU: {a.backbone}, batch {a.batch_size}", body, {"rows": rows}, True,
            settings=f"{a.backbone}, batch {a.batch_size}, synthetic CIFAR-shaped data in memory, torch threads "
            f"{a.threads or 'default'}")
def run_keep_heap(a, command: str) -> None:
    """glibc's heap kept (trainer.keep_heap=true) or handed back to the OS (false): the setting is process-wide, so
    every run is a fresh process, on and off interleaved; per run the step and loop img/s and the minor page faults
    per loop step."""
    m = machine(a.device, a.threads)
    configs = [{**base_config(a), "method": method, "keep_heap": heap}
               for method in a.methods.split(",") for heap in (True, False)]
    name = lambda c: f"{c['method']} trainer.keep_heap={str(c['keep_heap']).lower()}"  # noqa: E731

    def render(rows: list[dict], final: bool) -> None:
        lines = ["| method | trainer.keep_heap | step img/s | loop img/s | minor page faults per step, each run | "
                 "loop ratio on / off |", "|---|---|---|---|---|---|"]
        loop = {(r["method"], r.get("keep_heap")): r.get("loop_img_per_s") for r in rows}
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['method']} | {r.get('keep_heap')} | failed: {r['error']} ||||")
                continue
            on, off = loop.get((r["method"], True)), loop.get((r["method"], False))
            faults = ", ".join(fmt(f) for f in r["minor_faults_per_step_runs"])
            lines.append(f"| {r['method']} | {str(r['keep_heap']).lower()} | {fmt(r['step_img_per_s'], 1)} | "
                         f"{fmt(r['loop_img_per_s'], 1)} | {faults} | "
                         f"{fmt(on / off, 3) if r['keep_heap'] and on and off else ''} |")
        body = ("- each run a fresh process (mallopt is process-wide), on and off interleaved; img/s medians over the "
                "runs; page faults counted with getrusage over the timed loop\n\n" + "\n".join(lines) + "\n")
        publish(a, m, command, f"Kept heap on CPU: {a.backbone}, batch {a.batch_size}", body, {"rows": rows}, final)

    render(run_interleaved(configs, a.repeats, label=name, on_result=lambda so_far: render(so_far, False)), True)


