#!/usr/bin/env python
"""The method-cost table (results/method_costs.md): what each method costs on top of plain CE, by formula and
measured on this machine.

    python scripts/method_costs.py                      # resnet32, batch 64, CPU, 20 steps after 3 warm-up, median of 3

Each method runs in fresh subprocesses, interleaved (ce lsr ... dlb, ce lsr ... dlb, ...: one timed run each, median
of --repeats), through scripts/benchmark.py's measurement (model-only step and the Trainer's
loop on synthetic CIFAR-100-shaped data, 50000 training images as CIFAR). tfkd_self gets a random-init teacher of the
same architecture (a trained one costs the same). Memory: bytes autograd saves for backward in one step (parameters
excluded), bytes the method keeps between steps, and the process's peak RSS (CPU; CUDA: peak allocated).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as B  # noqa: E402


def costs() -> dict:
    """Row name -> the method's Cost (dlb/methods/base.py): every method in table order, each followed by the other
    settings it names in cost_variants ("dlb:backward=split")."""
    from dlb.methods import METHODS, ordered

    rows = {}
    for name in ordered(METHODS):
        rows[name] = METHODS[name].cost
        rows.update({f"{name}:{setting}": cost for setting, cost in METHODS[name].cost_variants.items()})
    return rows


def epoch_time_vs_ce(ce: dict, r: dict) -> float | None:
    """Median over rounds of CE's loop img/s / the method's in the same round (the runs are interleaved, one round
    after another, so a round's runs are minutes apart while the rounds may be hours apart)."""
    a, b = ce.get("loop_img_per_s_runs", []), r.get("loop_img_per_s_runs", [])
    if not a or len(a) != len(b):  # a failed run breaks the pairing: fall back to the medians
        return ce["loop_img_per_s"] / r["loop_img_per_s"] if "loop_img_per_s" in ce else None
    return statistics.median(x / y for x, y in zip(a, b))


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
    p.add_argument("--out", type=Path, default=B.REPO / "results" / "method_costs.md")
    p.add_argument("--render", type=Path, default=None, help="rewrite the table from a saved .json (no measuring)")
    a = p.parse_args(argv)
    render = a.render
    if render:  # the measurement's own command, machine and rows; only the Markdown is made again
        saved = json.loads(render.read_text())
        a = p.parse_args(saved["command"].split()[2:])
        command, m, rows = saved["command"], saved["machine"], saved["rows"]
    else:
        command = "python scripts/method_costs.py " + " ".join(sys.argv[1:] if argv is None else argv)
    bench_args = B.parse(["--backbone", a.backbone, "--batch-size", str(a.batch_size), "--device", a.device,
                          "--steps", str(a.steps), "--warmup", str(a.warmup), "--repeats", str(a.repeats),
                          "--train-size", str(a.train_size), "--test-size", "1000"]
                         + (["--threads", str(a.threads)] if a.threads else []))
    if not render:
        m = B.machine(a.device, a.threads)
        methods = a.methods.split(",")
        runs = B.run_interleaved([{**B.base_config(bench_args), "method": method} for method in methods], a.repeats)
        rows = dict(zip(methods, runs))
        m["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)

    from dlb.config import compose
    from dlb.models import build_model

    name = B.backbone_timm_name(a.backbone)
    K, N, Bsz, img = 100, a.train_size, a.batch_size, 3 * 32 * 32 * 4
    P = sum(q.numel() for q in build_model(compose([f"backbone={a.backbone}"]), K).parameters())
    table = costs()
    ce = rows.get("ce", {})
    A = ce.get("saved_activation_bytes")
    A_peak = ce.get("peak_saved_activation_bytes")
    cuda = bool(m.get("gpu")) and a.device != "cpu"
    mem_key, mem_name = ("peak_cuda_allocated_bytes", "peak CUDA alloc MB") if cuda else ("peak_rss_bytes",
                                                                                        "peak RSS MB (process)")
    lines = [f"| method | images through the net per step (× B) | needs a teacher | extra memory vs CE (formula) | "
             f"formula, MB | measured: saved for backward MB (vs CE) | measured: peak held for backward MB (vs CE) | "
             f"measured: kept between steps MB | "
             f"step img/s | loop img/s | epoch time vs CE | {mem_name} |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, r in rows.items():
        cost = table[method]
        passes, teacher, formula, f = cost.passes, cost.teacher, cost.memory, cost.memory_bytes
        if "error" in r:
            lines.append(f"| {method} | {passes} | {teacher} | {formula} | error: {r['error'][:100]} |" + " |" * 7)
            continue
        fb = f(A, P, N, K, Bsz, img) if A is not None else None
        saved = r.get("saved_activation_bytes")
        held = r.get("peak_saved_activation_bytes")
        delta = f" ({(saved - A) / 2**20:+,.1f})" if saved is not None and A is not None else ""
        held_delta = f" ({(held - A_peak) / 2**20:+,.1f})" if held is not None and A_peak is not None else ""
        vs_ce = epoch_time_vs_ce(ce, r)
        lines.append(f"| {method} | {passes} | {teacher} | {formula} | {B.mb(fb)} | {B.mb(saved)}{delta} | "
                     f"{B.mb(held)}{held_delta} | {B.mb(r.get('method_state_bytes'))} | {B.fmt(r['step_img_per_s'])} | "
                     f"{B.fmt(r['loop_img_per_s'])} | {B.fmt(vs_ce, 2)} | {B.mb(r.get(mem_key))} |")
    notes = (f"- symbols: B = {Bsz} (batch), K = {K} classes, N = {N} training images, img = 3·32·32·4 = {img} "
             "bytes "
             f"(one float32 view), P = {P:,} parameters of {name}, A = CE's bytes saved for backward in one step "
             f"(measured: {B.mb(A)} MB)\n"
             "- images through the net: calls with gradient unless marked; DLB's two forwards are separate calls "
             "(BatchNorm statistics per half), DDGSD's two views are one call\n"
             "- img/s: training images consumed per second (B per step), so extra forwards show up as lower img/s; "
             "epoch time vs CE = CE loop img/s / the method's in the same round of runs, median over the rounds "
             "(every method takes N/B steps per epoch)\n"
             "- memory: 'saved for backward' is measured with saved-tensor hooks in one eager step (distinct "
             "storages, parameters excluded), 'peak held' is the most of it alive at once (DLB's split backward "
             "frees the first forward's before the second runs); 'kept between steps' sums the method's tensors "
             "(teacher weights, PS-KD memory, DLB's last batch); peak RSS is the whole process (Python, torch, the "
             "150 MB in-memory dataset), so differences between rows are what the methods add\n")
    md = (B.header(m, bench_args, command, f"Method costs: {a.backbone}, batch {Bsz}, {a.device}") + notes + "\n"
          + "\n".join(lines) + "\n")
    print("\n" + md)
    B.write_outputs(a.out.with_suffix(""), md, {"machine": m, "command": command, "rows": rows,
                                                "symbols": {"A": A, "P": P, "N": N, "K": K, "B": Bsz, "img": img}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
